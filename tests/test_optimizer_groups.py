"""What the optimizer decays: the weights of linear maps, never biases, norms or positions.

Most training tests run with ``weight_decay=0``; a recipe with decay must still
leave the parameters that decay would harm alone. (That training builds its
optimizer from these groups is checked on a real run in test_damage.)
"""

from __future__ import annotations

from torch import nn

from conftest import tiny_config
from vidmusician import attach_adapters
from vidmusician.adapter.layers import VisualMemory
from vidmusician.training.model_setup import optimizer_groups


def test_weight_decay_reaches_the_weights_of_linear_maps_only(tiny):
    musicgen = tiny()
    vm = attach_adapters(musicgen, tiny_config(musicgen, rhythm_rank=4))
    vm.set_trainable(["semantic", "rhythm"])
    decayed, rest = optimizer_groups(vm, 0.1)
    assert (decayed["weight_decay"], rest["weight_decay"]) == (0.1, 0.0)
    decayed, rest = {id(p) for p in decayed["params"]}, {id(p) for p in rest["params"]}
    assert not decayed & rest and decayed | rest == {id(p) for p in vm.trainable_parameters()}
    kinds = {"linear weights": set(), "biases": set(), "norms": set(), "positions": set()}
    for module in vm.lm.modules():
        if isinstance(module, nn.Linear) and module.weight.requires_grad:
            kinds["linear weights"].add(id(module.weight))
            if module.bias is not None:
                kinds["biases"].add(id(module.bias))
        elif isinstance(module, nn.LayerNorm) and module.weight.requires_grad:
            kinds["norms"] |= {id(module.weight), id(module.bias)}
        elif isinstance(module, VisualMemory):
            kinds["positions"].add(id(module.pos))
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}  # the adapters have each kind
    assert decayed == kinds["linear weights"]
    assert kinds["biases"] | kinds["norms"] | kinds["positions"] <= rest
