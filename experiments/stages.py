"""Prints a run of configs/iwae.py's schedule stage by stage, as README's table, and draws
its test NLL against epochs beside the paper's final number.

    python experiments/stages.py runs/iwae_vae_k1_s8 [--figure=PATH] [--paper_nll=86.76]

Reads the run's config.json, epoch_metrics.jsonl (the stage-end NLLs of
config.eval.nll_at_epochs) and eval.json (the NLL with k = 5000 at the end), all written by
python -m vae_jax.main.
"""

import argparse
import json
import os

from vae_jax import config_schema
from vae_jax import figures
from vae_jax import workdir as workdir_lib


def stage_rows(run_dir: str) -> list[dict]:
  """One row per stage end logged so far: epoch, step, learning rate, test -ELBO, NLL."""
  with open(os.path.join(run_dir, "config.json")) as f:
    config = json.load(f)
  history = {round(entry["epoch"]): entry for entry in workdir_lib.read_history(run_dir)}
  final = workdir_lib.read_eval(run_dir) or {}
  rows = []
  for stage in range(config["train"]["schedule_stages"]):
    epoch = config_schema.schedule_epochs(stage + 1)
    entry = history.get(epoch)
    if entry is None:
      break
    row = {"stage": stage, "epoch": epoch, "step": entry["step"],
           "learning_rate": config["train"]["learning_rate"] * 10 ** (-stage / 7),
           "test_neg_elbo_nats": entry["test_neg_elbo_nats"],
           "test_kl_nats": entry["test_kl_nats"],
           "active_units": entry.get("test_active_units")}
    if "test_nll_nats" in entry:
      row.update(nll=entry["test_nll_nats"], nll_stderr=entry["test_nll_stderr"],
                 k=entry["test_nll_num_samples"])
    elif final.get("step") == entry["step"] and "nll_nats" in final:
      row.update(nll=final["nll_nats"], nll_stderr=final["nll_stderr"],
                 k=final["num_importance_samples"], active_units=final["active_units"])
    rows.append(row)
  return rows


def markdown(rows: list[dict], paper_nll: float) -> str:
  lines = ["| stage | epochs | steps | learning rate | test −ELBO | test KL | active units | "
           f"test NLL (k) | to the paper's {paper_nll} |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for row in rows:
    nll = (f"{row['nll']:.2f} ± {row['nll_stderr']:.2f} ({row['k']})" if "nll" in row
           else "")
    gap = f"{row['nll'] - paper_nll:+.2f}" if "nll" in row else ""
    lines.append(f"| {row['stage']} | {row['epoch']} | {row['step']:,} | "
                 f"{row['learning_rate']:.2e} | {row['test_neg_elbo_nats']:.2f} | "
                 f"{row['test_kl_nats']:.2f} | {row['active_units']} | {nll} | {gap} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("run_dir")
  parser.add_argument("--figure", default="", help="Where to write the NLL-by-epoch PNG.")
  parser.add_argument("--paper_nll", type=float, default=86.76,
                      help="The paper's final test NLL (Burda et al.: 1-layer VAE 86.76).")
  args = parser.parse_args()
  rows = stage_rows(args.run_dir)
  print(markdown(rows, args.paper_nll))
  if args.figure:
    with_nll = [row for row in rows if "nll" in row]
    os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
    figures.save_png(figures.nll_by_epoch(
        [row["epoch"] for row in with_nll], [row["nll"] for row in with_nll],
        [row["nll_stderr"] for row in with_nll],
        [row["epoch"] for row in rows], [row["test_neg_elbo_nats"] for row in rows],
        reference=args.paper_nll), args.figure)
    print(f"Wrote {args.figure}")


if __name__ == "__main__":
  main()
