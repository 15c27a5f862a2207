"""genrecon.utils.probe_cli: the probes' config JSON is merged over their defaults and checked."""

from __future__ import annotations

import pytest

from genrecon.utils.probe_cli import probe_arguments

DEFAULTS = {"width": 128, "lr": 1e-3}


def test_config_overrides_defaults():
    args, cfg = probe_arguments(None, DEFAULTS, steps=50, argv=["--shards", "x", "--config", '{"width": 32}',
                                                                 "--threads", "1"])
    assert cfg == {"width": 32, "lr": 1e-3} and args.steps == 50 and args.views == 8


@pytest.mark.parametrize("config", ['{"widht": 32}', "{width: 32}"])
def test_bad_config_is_refused(config, capsys):
    with pytest.raises(SystemExit):
        probe_arguments(None, DEFAULTS, steps=50, argv=["--shards", "x", "--config", config])
    assert "--config" in capsys.readouterr().err
