"""What every package of the hub builds on and nothing of the hub's: the root of its errors.

Standard library only, so ``fhir_mapping`` (which imports nothing of ``hub``) and ``hub`` share it.
"""

from hubbase.errors import HubError

__all__ = ["HubError"]
