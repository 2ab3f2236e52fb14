"""Global-norm gradient clipping for each member of an ensemble on its own.

An ensemble's members (``nn.SentimentEnsemble``) train side by side in one step, each on
its own loss. Clipping their gradients by one global norm over all of them would couple
them: one member's large gradient would shrink the others' steps. Each member's
gradients are clipped by their own global norm instead, as if it trained alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

MEMBERS = "members"  # the ensemble's attribute holding its members (nn.SentimentEnsemble)


def member_index(path) -> int:
    """The member a leaf of the ensemble's state belongs to, from its key path
    (``members / <index> / ...``)."""
    keys = [getattr(entry, "key", getattr(entry, "name", None)) for entry in path]
    index = keys[keys.index(MEMBERS) + 1] if MEMBERS in keys[:-1] else None
    if not isinstance(index, int):
        raise ValueError(f"clip_each_member: {jax.tree_util.keystr(path)} is not a member's")
    return index


def clip_each_member(max_norm: float) -> optax.GradientTransformation:
    """Scales each member's updates by ``min(1, max_norm / norm)``, ``norm`` the global norm
    of that member's updates alone (``optax.clip_by_global_norm`` per member)."""

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
        members = [member_index(path) for path, _ in leaves]
        squares: dict[int, jax.Array] = {}
        for member, (_, leaf) in zip(members, leaves, strict=True):
            squares[member] = squares.get(member, 0.0) + jnp.sum(jnp.square(leaf))
        scales = {member: max_norm / jnp.maximum(jnp.sqrt(total), max_norm)
                  for member, total in squares.items()}
        clipped = [(leaf * scales[member]).astype(leaf.dtype)
                   for member, (_, leaf) in zip(members, leaves, strict=True)]
        return jax.tree_util.tree_unflatten(treedef, clipped), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
