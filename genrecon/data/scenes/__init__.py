"""Scene sources: the synthetic room generator and the 3D-FRONT and SAGE-10k importers, all returning
:class:`Scene` (z-up, metres, floor at z = 0)."""

from genrecon.data.scenes.front3d import load_front3d_house
from genrecon.data.scenes.sage import load_sage_scene
from genrecon.data.scenes.scene import Scene
from genrecon.data.scenes.synthetic import SyntheticRoomConfig, generate_room

__all__ = ["Scene", "SyntheticRoomConfig", "generate_room", "load_front3d_house", "load_sage_scene"]
