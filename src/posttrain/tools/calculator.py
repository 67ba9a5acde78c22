"""The ``calculator`` tool: arithmetic on numbers, evaluated by walking Python's ``ast``.

Nothing is ``eval``-ed. The expression is parsed with ``ast.parse(mode="eval")`` and only these
nodes are accepted: number literals, ``+ - * / // % **``, unary ``+ -`` and parentheses. Names,
calls, attributes, subscripts, strings, comprehensions and everything else are refused, so no
builtin, module or object is reachable from model text. Size limits keep one call cheap:
at most ``MAX_LENGTH`` characters, exponents up to ``MAX_EXPONENT``, and every intermediate
value below ``MAX_MAGNITUDE`` in absolute value (``9**9**9`` is refused before it is computed).

Example::

    >>> calculator("1234 * 5678")
    '7006652'
    >>> calculator("(7 + 5) / 4")
    '3'
"""

from __future__ import annotations

import ast
import math
import operator

__all__ = ["calculator", "CalculatorError", "evaluate_arithmetic"]

MAX_LENGTH = 200
MAX_EXPONENT = 64
MAX_MAGNITUDE = 10 ** 30

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot compute; the message says why."""


def _check(value):
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    if abs(value) >= MAX_MAGNITUDE:
        raise CalculatorError(f"a value exceeds the calculator's limit of 1e{len(str(MAX_MAGNITUDE)) - 1}")
    return value


def _evaluate(node: ast.AST):
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):  # bool is not a number here
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_evaluate(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} is above the limit of {MAX_EXPONENT}")
        if isinstance(node.op, ast.Pow) and left == 0 and right < 0:
            raise CalculatorError("division by zero")
        try:
            result = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large") from None
        if isinstance(result, complex):
            raise CalculatorError("the result is not a real number")
        return _check(result)
    raise CalculatorError(f"only numbers and + - * / // % ** ( ) are allowed, not {type(node).__name__}")


def evaluate_arithmetic(expression: str) -> int | float:
    """The value of ``expression``; raises :class:`CalculatorError` for anything refused."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be text, got {type(expression).__name__}")
    text = expression.strip().replace("×", "*").replace("÷", "/").replace("^", "**")
    if len(text) > MAX_LENGTH:
        raise CalculatorError(f"the expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"cannot parse {expression!r} as arithmetic") from None
    return _evaluate(tree)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression and return its value.

    Args:
        expression: Arithmetic on numbers with + - * / // % ** and parentheses, e.g. "1234 * 5678".
    """
    try:
        value = evaluate_arithmetic(expression)
    except CalculatorError as e:  # the model wrote a bad expression: tell it, as a result
        return f"error: {e}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 10) if isinstance(value, float) else value)
