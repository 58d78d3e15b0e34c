"""A workdir on Google Cloud Storage (gs://), offline: every file a run writes lands in the
bucket, none beside it, and a run there resumes bit for bit.

The bucket is gcp-storage-emulator's, in memory, on localhost. Three clients reach it:
- tensorstore (orbax's arrays): TENSORSTORE_GCS_HTTP_URL points its gcs driver at it;
- tf.io.gfile (epath's backend for gs://, and clu's TensorBoard writer): TensorFlow's GCS
  filesystem has its https endpoints built in, so it goes through a local proxy
  (https_proxy, which its libcurl honours) that terminates TLS with a certificate made here
  (CURL_CA_BUNDLE) and forwards the plain requests to the emulator;
- google-cloud-storage (orbax asks it whether a bucket has a hierarchical namespace):
  STORAGE_EMULATOR_HOST.
GOOGLE_AUTH_TOKEN_FOR_TESTING and NO_GCE_CHECK keep tensorstore and TensorFlow from looking
for credentials. Nothing leaves the machine: every address is 127.0.0.1.
"""

import contextlib
import datetime
import http
import inspect
import json
import os
import re
import select
import socket
import ssl
import threading
import urllib.parse

import chex
import jax
import numpy as np
import pytest

from tests.helpers import synthetic_splits, tiny_config
from vae_jax import checkpoint
from vae_jax import input_pipeline
from vae_jax import models
from vae_jax import steps
from vae_jax import train
from vae_jax import workdir as workdir_lib

emulator_server = pytest.importorskip("gcp_storage_emulator.server")
x509 = pytest.importorskip("cryptography.x509")

_BUCKET = "vae-jax-test"
# The hosts of TensorFlow's GCS requests (JSON API, uploads, media downloads).
_GOOGLE_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


def _certificate(directory) -> tuple[str, str]:
  """A self-signed certificate for _GOOGLE_HOSTS (its own CA): (cert path, key path)."""
  from cryptography.hazmat.primitives import hashes, serialization  # pylint: disable=g-import-not-at-top
  from cryptography.hazmat.primitives.asymmetric import ec  # pylint: disable=g-import-not-at-top
  key = ec.generate_private_key(ec.SECP256R1())
  name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "fake gcs")])
  now = datetime.datetime.now(datetime.timezone.utc)
  cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
          .public_key(key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.SubjectAlternativeName([x509.DNSName(h) for h in _GOOGLE_HOSTS]),
                         critical=False)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(key, hashes.SHA256()))
  cert_path, key_path = str(directory / "cert.pem"), str(directory / "key.pem")
  with open(cert_path, "wb") as f:
    f.write(cert.public_bytes(serialization.Encoding.PEM))
  with open(key_path, "wb") as f:
    f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))
  return cert_path, key_path


def _pump(a, b):
  """Copies bytes both ways until either side closes."""
  try:
    while True:
      readable, _, _ = select.select([a, b], [], [], 60)
      if not readable:
        return
      for source in readable:
        data = source.recv(65536)
        if not data:
          return
        (b if source is a else a).sendall(data)
  except OSError:
    return
  finally:
    for s in (a, b):
      with contextlib.suppress(OSError):
        s.close()


def _proxy_connection(client, tls, emulator_address):
  """One client connection: CONNECT host:443 (TLS, ended here) or a plain proxied request
  (the emulator's upload URLs are http://www.googleapis.com/...), both to the emulator."""
  try:
    head = b""
    while b"\r\n\r\n" not in head:
      chunk = client.recv(65536)
      if not chunk:
        client.close()
        return
      head += chunk
    method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
    upstream = socket.create_connection(emulator_address)
    if method == "CONNECT":
      client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
      _pump(tls.wrap_socket(client, server_side=True), upstream)
      return
    url = urllib.parse.urlsplit(target)
    lines = head.split(b"\r\n")[1:]
    if any(line.lower() == b"expect: 100-continue" for line in lines):
      # Answered here: the emulator's HTTP/1.0 server never says 100, and curl would wait
      # a second for it before every upload.
      client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
      lines = [line for line in lines if line.lower() != b"expect: 100-continue"]
    path = url.path + (f"?{url.query}" if url.query else "")
    upstream.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + b"\r\n".join(lines))
    _pump(client, upstream)
  except (OSError, ValueError):
    with contextlib.suppress(OSError):
      client.close()


def _serve_proxy(listener, tls, emulator_address):
  while True:
    try:
      client, _ = listener.accept()
    except OSError:
      return  # Closed at teardown.
    threading.Thread(target=_proxy_connection, args=(client, tls, emulator_address),
                     daemon=True).start()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _with_generations(handler):
  """An emulator handler that also keeps GCS's generation contract, on which tensorstore's
  conditional writes (orbax's OCDBT manifests) rely and which the emulator leaves out: the
  object's generation in the x-goog-generation header, ifGenerationMatch (412 when the
  object's generation, 0 for none, differs) and ifGenerationNotMatch (304 when equal)."""
  from gcp_storage_emulator.exceptions import NotFound  # pylint: disable=g-import-not-at-top

  def generation(request, storage):
    bucket = request.params.get("bucket_name")
    name = request.params.get("object_id") or (request.query.get("name") or [None])[0]
    if not bucket or not name:
      return None
    try:
      return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
      return "0"

  def handle(request, response, storage, *args, **kwargs):
    current = generation(request, storage)
    if current is not None:
      match, not_match = (request.query.get(key, [None])[0]
                          for key in ("ifGenerationMatch", "ifGenerationNotMatch"))
      if match is not None and match != current:
        response.status = http.HTTPStatus.PRECONDITION_FAILED
        return None
      if not_match is not None and not_match == current:
        response.status = http.HTTPStatus.NOT_MODIFIED
        return None
    result = handler(request, response, storage, *args, **kwargs)
    current = generation(request, storage)
    if current not in (None, "0"):
      response["x-goog-generation"] = current
    return result

  return handle


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
  """A fake GCS bucket for this module: yields its gs:// root."""
  with pytest.MonkeyPatch.context() as patch:
    # Two places where the emulator is not GCS, fixed for this module's server only:
    # an empty upload (TensorFlow's folder markers) is stored empty, not refused; and a
    # body sent chunked (TensorFlow's uploads, which also send Content-Length) is read by
    # its chunks, as HTTP says (Transfer-Encoding overrides Content-Length).
    read_data, read_raw_data = emulator_server._read_data, emulator_server._read_raw_data

    def read_data_or_empty(handler, query):
      data = read_data(handler, query)
      return b"" if data is None and query.get("uploadType") == ["media"] else data

    def read_raw_data_chunked_first(handler):
      if (handler.headers.get("Transfer-Encoding") or "").lower() == "chunked":
        del handler.headers["Content-Length"]
      return read_raw_data(handler)

    patch.setattr(emulator_server, "_read_data", read_data_or_empty)
    patch.setattr(emulator_server, "_read_raw_data", read_raw_data_chunked_first)
    patch.setattr(emulator_server, "HANDLERS", tuple(
        (route, {method: _with_generations(handler) for method, handler in handlers.items()})
        for route, handlers in emulator_server.HANDLERS))
    port = _free_port()
    server = emulator_server.create_server("127.0.0.1", port, in_memory=True,
                                           default_bucket=_BUCKET)
    server.start()
    cert, key = _certificate(tmp_path_factory.mktemp("fake_gcs"))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    threading.Thread(target=_serve_proxy, args=(listener, tls, ("127.0.0.1", port)),
                     daemon=True).start()
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name, value in {
        "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{port}",
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token", "NO_GCE_CHECK": "true",
        "https_proxy": proxy, "http_proxy": proxy, "no_proxy": "127.0.0.1,localhost",
        "CURL_CA_BUNDLE": cert}.items():
      patch.setenv(name, value)
    try:
      yield f"gs://{_BUCKET}"
    finally:
      listener.close()
      server.stop()


def _bucket_files(gcs_root: str, prefix: str) -> dict[str, bytes]:
  """{path under prefix: contents} of the bucket's objects (folder markers left out)."""
  from google.cloud import storage  # pylint: disable=g-import-not-at-top
  bucket = storage.Client(project="test").bucket(gcs_root.removeprefix("gs://"))
  return {blob.name[len(prefix) + 1:]: blob.download_as_bytes()
          for blob in bucket.list_blobs(prefix=prefix + "/") if not blob.name.endswith("/")}


def _local_files(root) -> dict[str, bytes]:
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


def _write_every_workdir_file(workdir: str, config) -> None:
  """What a run writes through vae_jax/workdir.py, with fixed contents."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  workdir_lib.write_config(workdir, config)
  workdir_lib.record_manifest(workdir, config, resumed_from_step=None)
  workdir_lib.write_history(workdir, [{"step": 4, "train_neg_elbo_nats": 1.5},
                                      {"step": 8, "train_neg_elbo_nats": 1.25}])
  workdir_lib.write_eval(workdir, {"split": "test", "step": 8, "weights": "raw",
                                   "neg_elbo_nats": 1.0})
  workdir_lib.write_json(workdir, workdir_lib.TIMINGS_FILE, {"total": 2.0})
  figure = plt.figure(figsize=(1, 1))
  figure.add_subplot().plot([0, 1], [1, 0])
  with metric_writers.ensure_flushes(workdir_lib.open_writer(workdir)) as writer:
    workdir_lib.write_figures(workdir, writer, 8, {"curve": figure})


def test_workdir_files_land_in_the_bucket_as_they_do_locally(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # Where a local folder named "gs:" would appear.
  config = tiny_config()
  local = str(tmp_path / "local")
  os.makedirs(local)
  _write_every_workdir_file(local, config)
  remote = f"{gcs}/files"
  _write_every_workdir_file(remote, config)

  assert not os.path.exists(tmp_path / "gs:")
  local_files, remote_files = _local_files(local), _bucket_files(gcs, "files")
  events = re.compile(r"events\.out\.tfevents\..*")
  assert ({events.sub("events", name) for name in remote_files}
          == {events.sub("events", name) for name in local_files}
          == {"config.json", "manifest.json", "epoch_metrics.jsonl", "eval.json",
              "timings.json", "figures/curve.png", "events"})
  for name in ("config.json", "epoch_metrics.jsonl", "eval.json", "timings.json",
               "figures/curve.png"):
    assert remote_files[name] == local_files[name], name
  # Read back from the bucket, as a resume and load_run read them.
  assert workdir_lib.read_history(remote) == workdir_lib.read_history(local)
  assert workdir_lib.read_eval(remote) == workdir_lib.read_eval(local)
  assert len(workdir_lib.read_manifest(remote)) == 1
  workdir_lib.check_same_config(config, remote, checkpoint_step=8)  # Same config: no error.
  # A rewrite replaces the object whole (no .tmp object is left beside it).
  workdir_lib.write_json(remote, workdir_lib.TIMINGS_FILE, {"total": 3.0})
  assert _bucket_files(gcs, "files")["timings.json"] == b'{\n  "total": 3.0\n}'
  assert not any(name.endswith(".tmp") for name in _bucket_files(gcs, "files"))


@pytest.mark.slow  # Orbax's writes through the emulator.
def test_checkpoints_save_list_and_restore_in_the_bucket(gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = tiny_config()
  model = _model(config)
  state = steps.create_train_state(model, config, jax.random.key(0))
  workdir = f"{gcs}/checkpoints_only"
  checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=2)
  assert checkpointer.workdir == workdir  # Not made absolute as a local path would be.
  checkpointer.save(3, state, {"epoch_metrics": [{"loss": 1.0}]})
  checkpointer.close()
  assert checkpoint.saved_steps(workdir) == [3]
  assert not os.path.exists(tmp_path / "gs:")
  assert any(name.startswith("checkpoints/3/")
             for name in _bucket_files(gcs, "checkpoints_only"))
  checkpointer = checkpoint.Checkpointer(workdir, max_to_keep=2)
  other = steps.create_train_state(model, config, jax.random.key(1))
  restored, progress, step = checkpointer.restore_latest(other)
  checkpointer.close()
  assert step == 3 and progress == {"epoch_metrics": [{"loss": 1.0}]}
  chex.assert_trees_all_equal(restored.params, state.params)


def _model(config):
  """The model of `config`, with the image shape where models.get_model takes it."""
  if "image_shape" in inspect.signature(models.get_model).parameters:
    return models.get_model(config.model, input_pipeline.configured_image_shape(config),
                            config.dtype)
  return models.get_model(config.model, config.dtype)


def _resume_config():
  """Two epochs of 25 steps on the synthetic images, checkpoints at 25 and 50, the test NLL
  at the end and the final figures: every kind of file a run writes."""
  config = tiny_config()
  config.train.num_steps = 50
  config.train.log_every_steps = 5
  config.checkpoint_every_steps = 25
  config.checkpoints_to_keep = 10
  config.eval.num_importance_samples = 4
  config.figures.final = True
  return config


@pytest.mark.slow
def test_a_run_in_the_bucket_holds_every_local_file_and_resumes_bit_for_bit(
    gcs, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(input_pipeline, "load_splits", lambda data_config: synthetic_splits())
  config = _resume_config()
  local = str(tmp_path / "local")
  straight = train.train_and_evaluate(config, local)

  # Stopped by a failed save at step 50 (after the checkpoint of step 25), then rerun.
  real_save = checkpoint.Checkpointer.save

  def fail_at_50(self, step, *args, **kwargs):
    if step == 50:
      raise checkpoint.WriteError(f"the checkpoint of step {step}", self.step_path(step),
                                  "Simulated failure")
    return real_save(self, step, *args, **kwargs)

  remote = f"{gcs}/run"
  monkeypatch.setattr(checkpoint.Checkpointer, "save", fail_at_50)
  with pytest.raises(train.WriteFailedError):
    train.train_and_evaluate(config, remote)
  assert checkpoint.saved_steps(remote) == [25]
  monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
  assert train.train_and_evaluate(config, remote) == straight
  chex.assert_trees_all_equal(workdir_lib.load_run(remote).params,
                              workdir_lib.load_run(local).params)

  assert not os.path.exists(tmp_path / "gs:")
  local_files, remote_files = _local_files(local), _bucket_files(gcs, "run")

  def outside_checkpoints(names):
    # TensorBoard names its files by time, host and process; each start makes one.
    return {re.sub(r"events\.out\.tfevents\..*", "events", name) for name in names
            if not name.startswith("checkpoints/")}

  assert outside_checkpoints(remote_files) == outside_checkpoints(local_files)
  for name in ("config.json", "epoch_metrics.jsonl"):
    assert remote_files[name] == local_files[name], name

  def untimed(contents):  # eval.json also says how long its NLL took.
    return {key: value for key, value in json.loads(contents).items()
            if not key.endswith("_seconds")}

  assert untimed(remote_files["eval.json"]) == untimed(local_files["eval.json"])
  assert {name for name in remote_files if name.startswith("figures/")} == {
      name for name in local_files if name.startswith("figures/")}
  assert checkpoint.saved_steps(remote) == checkpoint.saved_steps(local) == [25, 50]
  assert len(workdir_lib.read_manifest(remote)) == 2  # The start and the resume.
  np.testing.assert_equal(workdir_lib.read_history(remote), workdir_lib.read_history(local))
