"""Build a dataset: scenes -> renders -> chunks -> O-Voxel + occupancy -> WebDataset shards (-> latents).

    python prepare.py dataset=synthetic dataset.num_scenes=4
"""

import hydra
from omegaconf import DictConfig

from genrecon.utils.run_dir import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    from genrecon.tasks.prepare import prepare

    prepare(cfg)


if __name__ == "__main__":
    main()
