"""benchmarks/prepare_rasteriser.py: the same rooms built twice agree exactly, and a backend that cannot run
(nvdiffrast without a GPU) is reported with its error instead of ending the comparison."""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_two_builds_of_the_same_rooms_agree_and_a_failed_backend_is_reported(tmp_path):
    bench = load_script("benchmarks/prepare_rasteriser.py")
    out = tmp_path / "r.json"
    result = bench.main(["--rooms", "1", "--workers", "1", "--preset", "tiny", "--max-cameras", "16", "--backends",
                         "embree", "embree", "nvdiffrast", "--root", str(tmp_path), "--out", str(out)])
    base, again, gpu = result["runs"]
    assert base["rc"] == again["rc"] == 0 and base["chunks"]["written"] > 0
    assert base["timings_s"]["render"] > 0 and base["cameras"] == again["cameras"] <= 16
    same = again["against_base"]
    assert same["common"] == same["chunks_base"] == same["chunks_other"] == base["chunks"]["written"]
    assert same["occupancy_equal"] == same["same_view_count"] == same["same_cameras"] == same["common"]
    assert same["alpha_agreement"] == 1.0 and same["rgb_mean_abs_diff_0_255"] == 0.0
    # no CUDA here: the nvdiffrast build fails, is named with its error, and is not compared
    assert gpu["rc"] != 0 and gpu["tail"] and "against_base" not in gpu
    assert json.loads(out.read_text()) == result
