"""Score reconstructions against ground truth: Chamfer, precision/recall/F at 10 cm, normal consistency.

    python eval.py pred_dir=logs/infer/runs/<run_name> gt_dir=data/synthetic_tiny/scenes

Writes ``results.md`` and ``results.json`` to the run directory. Metric and envelope definitions:
docs/evaluation.md.
"""

import hydra
from omegaconf import DictConfig

from genrecon.utils.run_dir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    from genrecon.tasks.eval import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
