"""A decoder layer's role in one training step: what it keeps and whether backward reaches it.

The trainable set splits the stack below and above its lowest layer ``low``:

- ``FB`` (frozen below ``low``): forward only; nothing backpropagates into it (embeddings frozen);
- ``T0`` (trainable, the lowest one): its backward computes weight gradients but no input gradient;
- ``FA`` (frozen above ``low``): backward passes through it (input gradients, no weight gradients);
- ``T`` (trainable above ``low``): weight and input gradients.

The integer values index numpy arrays of roles (``planner.cost.compose``); the names are the role keys
of traced segments and events (``"fwd:T"``, ``"bwd0:T0"``).
"""

from __future__ import annotations

from enum import IntEnum


class Role(IntEnum):
    FB = 0
    T0 = 1
    FA = 2
    T = 3


ROLES = tuple(role.name for role in Role)  # index -> trace key
FB, T0, FA, T = Role
