"""manifest.json: which code, versions and devices made each start of a run."""

import datetime
import json
import logging
import os
import shutil
import subprocess

import pytest

from tests.helpers import tiny_config
from vae_jax import workdir as workdir_lib


def test_entry_has_every_field_typed():
  entry = workdir_lib.manifest_entry(tiny_config(), resumed_from_step=None)
  assert entry["resumed_from_step"] is None
  assert isinstance(entry["argv"], list) and all(isinstance(a, str) for a in entry["argv"])
  assert len(entry["config_sha256"]) == 64
  assert set(entry["git"]) == {"commit", "dirty", "diff_sha256"}
  assert entry["git"]["commit"] is None or len(entry["git"]["commit"]) == 40
  assert entry["git"]["dirty"] in (None, True, False)
  assert set(entry["versions"]) == {"python", *workdir_lib.MANIFEST_PACKAGES}
  assert all(v is None or isinstance(v, str) for v in entry["versions"].values())
  assert entry["versions"]["jax"] and entry["versions"]["python"]
  assert entry["backend"] == "cpu" and isinstance(entry["device_kind"], str)
  assert isinstance(entry["device_count"], int) and entry["device_count"] >= 1
  assert entry["process_count"] == 1
  assert entry["xla_flags"] == os.environ.get("XLA_FLAGS")
  start = datetime.datetime.fromisoformat(entry["start_time"])
  assert start.utcoffset() == datetime.timedelta(0)
  json.dumps(entry)  # Plain JSON, no default= needed.


def test_config_hash_is_stable_and_tells_configs_apart():
  assert (workdir_lib.config_sha256(tiny_config())
          == workdir_lib.config_sha256(tiny_config()))
  other = tiny_config()
  other.model.latent_dim = 5
  assert workdir_lib.config_sha256(other) != workdir_lib.config_sha256(tiny_config())


def test_records_append_and_a_resume_with_other_versions_warns(tmp_path, caplog):
  workdir, config = str(tmp_path), tiny_config()
  assert workdir_lib.record_manifest(workdir, config, resumed_from_step=None) == []
  assert workdir_lib.record_manifest(workdir, config, resumed_from_step=8) == []
  entries = workdir_lib.read_manifest(workdir)
  assert [e["resumed_from_step"] for e in entries] == [None, 8]

  # As if the previous start had run other code with another jax.
  entries[-1]["versions"]["jax"] = "0.0.1"
  entries[-1]["git"]["commit"] = "abc"
  with open(os.path.join(workdir, workdir_lib.MANIFEST_FILE), "w") as f:
    json.dump(entries, f)
  now = workdir_lib.manifest_entry(config, resumed_from_step=16)
  with caplog.at_level(logging.WARNING):
    changes = workdir_lib.record_manifest(workdir, config, resumed_from_step=16)
  assert f"jax 0.0.1 -> {now['versions']['jax']}" in changes
  assert f"git commit abc -> {now['git']['commit'] and now['git']['commit'][:12]}" in changes
  assert len(changes) == 2
  assert "at step 16 with other code or versions" in caplog.text
  assert "jax 0.0.1 -> " in caplog.text and "git commit abc -> " in caplog.text
  assert len(workdir_lib.read_manifest(workdir)) == 3


def test_only_process_0_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib, "is_writer", lambda: False)
  assert workdir_lib.record_manifest(str(tmp_path), tiny_config(), None) == []
  assert not os.listdir(tmp_path)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_state_follows_the_tree(tmp_path, monkeypatch):
  repo = str(tmp_path)
  # Stops git's search at tmp_path, in case the temporary directory lies in a checkout.
  monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
  assert workdir_lib.git_state(repo) == {"commit": None, "dirty": None, "diff_sha256": None}

  def git(*args):
    subprocess.run(["git", "-C", repo, "-c", "user.name=test", "-c", "user.email=t@example.com",
                    "-c", "commit.gpgsign=false", *args], check=True, capture_output=True)

  git("init", "-q")
  tracked = tmp_path / "tracked.py"
  tracked.write_text("a = 1\n")
  git("add", "tracked.py")
  git("commit", "-q", "-m", "first")
  clean = workdir_lib.git_state(repo)
  assert len(clean["commit"]) == 40
  assert clean["dirty"] is False and clean["diff_sha256"] is None

  (tmp_path / "untracked.py").write_text("ignored by the dirty flag\n")
  assert workdir_lib.git_state(repo) == clean

  tracked.write_text("a = 2\n")
  dirty = workdir_lib.git_state(repo)
  assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True
  assert len(dirty["diff_sha256"]) == 64
  tracked.write_text("a = 3\n")
  assert workdir_lib.git_state(repo)["diff_sha256"] != dirty["diff_sha256"]

  git("commit", "-q", "-am", "second")
  committed = workdir_lib.git_state(repo)
  assert committed["commit"] != clean["commit"] and committed["dirty"] is False
