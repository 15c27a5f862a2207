"""hardware=fsdp (and slurm_fsdp) compose for the trellis2 flows: FSDPStrategy wrapping and checkpointing the
transformer blocks, bf16 compute with float32 reduction, EMA off (Lightning's EMA cannot shard)."""

import hydra
import pytest
import torch
from hydra.utils import get_class
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import ShardingStrategy
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from genrecon.modules.transformer import ModulatedTransformerCrossBlock, SparseModulatedTransformerCrossBlock
from tests.conftest import compose_config

BLOCKS = {ModulatedTransformerCrossBlock, SparseModulatedTransformerCrossBlock}


@pytest.mark.parametrize("hardware", ["fsdp", "slurm_fsdp"])
@pytest.mark.parametrize("stage", ["ss_flow", "shape_flow", "tex_flow"])
def test_fsdp_composes_for_trellis2_flows(stage, hardware):
    cfg = compose_config("train", [f"stage={stage}", "preset=trellis2", f"hardware={hardware}"])
    assert cfg.stage.module.ema_decay is None
    assert cfg.stage.module.model.use_checkpoint is False  # checkpointing comes from the strategy
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu"

    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDPStrategy)
    wrap = strategy.kwargs["auto_wrap_policy"]
    assert isinstance(wrap, ModuleWrapPolicy) and BLOCKS <= set(wrap._module_classes)
    ckpt = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]
    assert set(ckpt._module_classes) == BLOCKS
    # the stage's network is built from these blocks (a renamed class would silently wrap nothing)
    assert get_class(cfg.stage.module.model._target_).block_cls in BLOCKS
    mp = strategy.mixed_precision
    dtypes = (mp.param_dtype, mp.reduce_dtype, mp.buffer_dtype)
    assert dtypes == (torch.bfloat16, torch.float32, torch.float32)
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert strategy.kwargs["use_orig_params"] is True and strategy._state_dict_type == "full"

    if hardware == "slurm_fsdp":  # node/task counts and the requeue plugin come from hardware=slurm
        assert cfg.trainer.devices == cfg.slurm.gpus_per_node and cfg.trainer.num_nodes == cfg.slurm.nodes
        assert cfg.trainer.plugins[0]._target_ == "genrecon.utils.slurm.slurm_environment"
        assert "find_unused_parameters" not in cfg.trainer.strategy  # nothing of the DDP strategy merged in
    else:
        assert cfg.trainer.devices == -1


def test_fsdp_builders_reject_bad_names():
    from genrecon.utils.fsdp import mixed_precision, module_classes

    with pytest.raises(ValueError):  # hydra's get_class: not a class
        module_classes(["genrecon.utils.fsdp.mixed_precision"])
    with pytest.raises(TypeError):  # a class, but not a module
        module_classes(["genrecon.data.shards.AtomicShardWriter"])
    with pytest.raises(ValueError):
        mixed_precision(param_dtype="bfloat17")
