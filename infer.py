"""Reconstruct a scene from posed images into a textured ``scene.glb``.

    python infer.py input=prepared input.scene_dir=data/synthetic_tiny/scenes/<scene_id> ckpt_dir=<checkpoints>
"""

import hydra
from omegaconf import DictConfig

from genrecon.utils.run_dir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="infer")
def main(cfg: DictConfig) -> None:
    from genrecon.tasks.infer import infer

    infer(cfg)


if __name__ == "__main__":
    main()
