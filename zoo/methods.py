"""The methods a posterior offers: a table of frozen specs that each model declares.

A method is a named run of one family (``nuts``, a closed form, or a guide family) with its
options; one family may appear under several names (two encoders of ``amortized``, say), and
all of them can run in one comparison. The runners live in :mod:`comparisons.runners`, one
per family, all with one signature.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

#: Other names a user may give for a method (one table for the command line and Python).
METHOD_ALIASES: dict[str, str] = {"map": "delta"}

#: The family of a closed-form method (its options name the form in
#: ``Posterior.closed_forms``).
CLOSED_FORM = "closed_form"

#: The family of the NUTS samplers.
NUTS = "nuts"


@dataclass(frozen=True)
class MethodSpec:
    """One method of a comparison.

    ``name`` is its name in reports and results.json; ``family`` the runner that runs it:
    ``"nuts"``, ``"closed_form"`` or a guide family (``mean_field``, ``amortized``...);
    ``options`` the family's options (a guide class's keywords, such as ``encoder``; for a
    closed form, ``form``: its key in ``Posterior.closed_forms``). ``default``: run when a
    comparison names no methods (False where it would take hours, with the reason in the
    posterior's description). ``build_forms``: for a guide family, the model it fits when
    that is not the posterior's own (``build_forms(seed) -> ModelForms``, as
    ``Posterior.build_forms``): a baseline model trained on the same rows and measured by
    the same hook, as the two-level VAE's one-layer sparse VAE.
    """

    name: str
    family: str
    options: Mapping[str, object] = field(default_factory=dict)
    default: bool = True
    build_forms: Callable[[int], object] | None = None


def declare_methods(
    closed_forms: Iterable[str],
    guides: Iterable[str],
    *,
    nuts: bool = True,
    not_by_default: Iterable[str] = (),
    variants: Iterable[MethodSpec] = (),
) -> tuple[MethodSpec, ...]:
    """The usual table of a model: its closed forms, then NUTS (``nuts``, the zoo's sampler,
    and ``nuts_pyro``, Pyro's kernel, which is not run by default), then one
    method per guide family (named by it), then any named ``variants``; the names in
    ``not_by_default`` are left out of the default set."""
    skip = set(not_by_default)
    specs = [MethodSpec(name, CLOSED_FORM, {"form": name}) for name in closed_forms]
    if nuts:
        specs += [NUTS_METHOD, NUTS_PYRO_METHOD]
    specs += [MethodSpec(name, name) for name in guides]
    specs += list(variants)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique, got {names}")
    return tuple(dataclasses.replace(s, default=s.default and s.name not in skip) for s in specs)


#: NUTS under its usual name, as a model declares it: the zoo's sampler (comparisons.nuts),
#: every chain advanced in one batched evaluation of the model's compiled potential.
NUTS_METHOD = MethodSpec(NUTS, NUTS)

#: Pyro's own NUTS kernel, by name (not run by default), its chains in processes of their
#: own where the machine has the cores: the sampler the zoo's is checked against.
NUTS_PYRO_METHOD = MethodSpec("nuts_pyro", NUTS, {"sampler": "pyro"}, default=False)
