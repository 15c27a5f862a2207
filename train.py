"""Train one GenRecon stage: ``python train.py stage=<stage> dataset=<dataset> hardware=<hardware>``.

Stages: ss_vae, shape_vae, tex_vae, ss_flow, shape_flow, tex_flow. Everything else is in ``conf/``.
"""

import sys

import hydra
from omegaconf import DictConfig

from genrecon.utils.config import metric_value
from genrecon.utils.run_dir import quiet_hydra_argv, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from genrecon.tasks.train import train

    metrics = train(cfg)
    return metric_value(metrics, cfg.get("optimized_metric")) if cfg.get("train", True) else None


if __name__ == "__main__":
    sys.argv = quiet_hydra_argv(sys.argv)
    main()
