"""Pluralistic reward models: variational preference learning (VPL).

Poddar et al. 2024, "Personalizing Reinforcement Learning from Human Feedback with Variational
Preference Learning" (https://arxiv.org/abs/2408.10075; reference code
https://github.com/WEIRDLabUW/vpl_llm). One reward model serves many users whose preferences
disagree: a latent ``z`` summarises a user, inferred from a handful of that user's labelled
comparisons.

Objective (per user u with context comparisons C_u and target comparisons T_u, C_u ∩ T_u = ∅)::

    q(z | C_u)  = N(μ, diag σ²)           encoder over the set of the user's labelled comparisons
    r(x, y, z)  = g(ê) + z · f(ê)         ê = standardised frozen embedding of prompt + response
    ELBO_u      = E_{z~q}[ (1/|T_u|) Σ_{(y+, y-) ∈ T_u} log σ(r(x, y+, z) − r(x, y-, z)) ]
                  − β_t · KL(q(z | C_u) ‖ N(0, I))

The expectation uses one reparameterised sample per user per step; the loss is −ELBO averaged over
the users of a batch (16 by default). Note the 1/|T_u|: the log-likelihood is a per-comparison mean,
so β also absorbs the target-set size (β = 0.01 with 16–23 targets ≈ β_paper 0.16–0.23). β_t is
annealed linearly from 0 to β over the first 30% of epochs (``kl_warmup``), so the encoder learns to
use z before the KL pulls it towards the prior. The latent has 4 dimensions by default. Context sets
have a random size in 1..``max_context`` (8) every step, as in the paper.

Context sets are a user's own labelled comparisons. By default they are drawn *stratified over pair
kinds* (``stratified_context``: round-robin over the kinds present, contested kinds first), at
training time and for held-out users; ``--context-sampler random`` draws uniformly. The kind of a
pair (agreed, or contested on length / on formality) says which axis its two responses differ on,
which whoever chooses the questions knows; it says nothing about the user's answer or group. A
uniform draw of 8 from a pool of 24 sometimes holds zero or one comparison on an axis, and then
nothing can be inferred about that axis.

Encoder choice (``VPLRewardModel.posterior``): comparison i casts a vote
``v_i = normalise(h(d_i) − h(−d_i))`` with ``d_i = ê(chosen) − ê(rejected)`` and ``h`` an MLP; the
votes are summed, ``log(1 + |C|)`` is appended, and an MLP head outputs (μ, log σ²). An empty
context returns the prior N(0, I) exactly. Why each part (measured on ``builtin:pluralistic`` with
MiniLM, held-out users, 8 context comparisons):

- Antisymmetric votes (swapping a label negates the vote exactly) and unit norm (every comparison
  weighs the same): with a plain ``h(d_i)`` and a mean, 5–15% of held-out user × context draws
  stayed below 85% accuracy, most of them with a mislabelled comparison in the context that the
  model followed instead of the clean majority on that axis (a whole axis wrong).
- Sum, not mean: a sum of per-comparison votes is the form of a naive-Bayes log-odds, so two
  agreeing comparisons and one flipped one leave one net vote, as strong as a single clean one.
  With both changes 96.7–97.5% of held-out user × context draws reach 85% (3 training seeds); each
  of the 10 below had a mislabelled comparison in its context, 4 of them a majority of flipped
  labels on an axis, which no model can undo (``majority_flipped``).
- ``log(1 + |C|)``: without the set size the posterior variance could not shrink as evidence
  accumulates. ``--pooling mean`` and ``--pooling attention`` (the paper's: one self-attention
  layer over the votes, then the mean) are kept for comparison.

Embeddings are standardised per dimension with training statistics, so small style directions are
not drowned by topic content.

Reward head: ``bilinear`` (default) is ``r = g(ê) + z · f(ê)`` with ``[f, g]`` one MLP with Z + 1
outputs: a score shared by all users plus one learned style score per latent dimension, weighed by
the user's z. ``concat`` is the paper's ``MLP([ê, z])`` and ``interact`` is
``MLP([ê, z, ê ⊙ P z])`` (P a learned map from z to embedding space). With the earlier encoder
(mean pooling, an earlier version of the data, β = 0.01), ``interact`` left one of the two axes
users disagree on out of z in 3 of 6 training seeds, ``concat`` in the one seed tried,
``bilinear`` in none of 4. Dropout 0.5 on ``ê`` inside the reward head keeps it from memorising
the topic words of training prompts.

Restarts: even so, the ELBO has poor local optima that leave one axis out of z (1 of 8 seeds in the
fast-test configuration, hashed features): its training loss stays clearly higher (0.43 against
0.30–0.33 there). ``train_vpl`` trains ``restarts`` (3) runs from different seeds and keeps the one
with the lowest final training loss; selection sees only training users.

Reward scaling (the paper's expected-likelihood scaling, used by its VPL-SPO variant): a
Bradley–Terry reward is defined only up to a shift and its scale differs between latents, so raw
rewards of two users are not comparable. ``expected_likelihood_reward`` returns
``r̃(x, y, z) = E_{y' ∈ ref}[σ(r(x, y, z) − r(x', y', z))]`` ∈ [0, 1]: the probability that the
response beats a reference set (here, the responses being scored, or any set passed in). The
report shows the per-user spread of raw and scaled rewards.

Uncertainty and active learning: under q(z | answered), each candidate comparison has a distribution
of preference probabilities p_s = σ(r(a, z_s) − r(b, z_s)). ``bald`` (default) picks the candidate
with the largest mutual information H(E p) − E H(p) (expected information about z from the user's
answer); ``variance`` picks the largest Var_s p_s. Both prefer contested comparisons on an axis not
yet asked about, since agreed comparisons carry no information about z (held-out users, MiniLM: the
first two queries cover both axes for 67% / 70% of users against 28% for random picks, and 16% of
the first four queries are agreed pairs against 32%). Querying stops when no remaining candidate's
BALD score exceeds ``--stop-info`` (0.01 nats) or at ``--max-queries``. (An earlier rule, mean
predictive entropy of the pool below 0.2 nats, never fired: it counts label noise too, and a model
calibrated to 5% noise never predicts below H(0.05) ≈ 0.2 nats.)

Departures from the paper: frozen sentence embeddings and MLP heads instead of an LLM backbone
(the paper's LLM variant also embeds pairs with a frozen model); the bilinear head and the
vote-sum encoder above (the paper's ``concat`` head and attention pooling are options); best of
``restarts`` runs; by default extra embedding columns holding log(1 + words of the response)
(``--no-length-feature`` drops them; see ``embed_rows``); the stratified context sampler above; no
RL stage here — the trained model is a per-user reward for the preference-tuning trainers.

Run::

    posttrain reward model_type=vpl data=builtin:pluralistic out=runs/vpl encoder=minilm
    posttrain reward model_type=vpl --help      # every option (VPLConfig in pluralistic/cli.py)
"""

from posttrain.pluralistic.cli import VPLConfig, load_vpl, main, run_vpl, save_model
from posttrain.pluralistic.data import (
    LENGTH_FEATURE_COPIES, UserSet, embed_rows, group_users, pair_text, response_length_feature, stratified_context,
)
from posttrain.pluralistic.evaluation import (
    active_learning_curve, evaluate_heldout, majority_flipped, queries_to_reach, vpl_user_accuracy,
)
from posttrain.pluralistic.model import (
    ACQUISITIONS, POOLINGS, REWARD_HEADS, BTRewardModel, VPLRewardModel, bald_score, binary_entropy,
    expected_likelihood_reward, mlp, preference_probs, sample_z,
    select_query, variance_score,
)
from posttrain.pluralistic.training import TrainConfig, train_bt, train_vpl

__all__ = [
    "ACQUISITIONS", "LENGTH_FEATURE_COPIES", "POOLINGS", "REWARD_HEADS", "BTRewardModel", "TrainConfig", "UserSet",
    "VPLConfig", "VPLRewardModel", "active_learning_curve", "bald_score", "binary_entropy",
    "embed_rows", "evaluate_heldout", "expected_likelihood_reward", "group_users",
    "load_vpl", "main", "majority_flipped", "mlp", "pair_text", "preference_probs", "queries_to_reach",
    "response_length_feature", "run_vpl", "sample_z", "save_model", "select_query", "stratified_context", "train_bt",
    "train_vpl", "variance_score", "vpl_user_accuracy",
]
