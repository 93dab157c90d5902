"""The paper's Table 1, reproduced: trains its rows with their recipes, each in its own
run directory under --workdir, and writes table1.md, table1.json and table1.png there.

  python -m experiments.table1 --workdir=runs/table1            # the four rows a CPU trains
  python -m experiments.table1 --workdir=runs/table1 --quick    # tiny configs, seconds
  python -m experiments.table1 --workdir=runs/table1 --rows=heartbeat,swiss_roll

A rerun continues unfinished rows and reuses finished ones; --quick rows have run
directories of their own (<row>_quick).
"""

import importlib
import os
import time

from absl import flags

from dpm_jax import errors
from . import common

ROWS = ("heartbeat", "swiss_roll", "dead_leaves", "texture")


def define(values: flags.FlagValues, argv) -> None:
  del argv
  flags.DEFINE_string("workdir", None, "Folder of the rows' run directories and the table.",
                      required=True, flag_values=values)
  flags.DEFINE_list("rows", list(ROWS), "The rows to train and tabulate.", flag_values=values)
  flags.DEFINE_bool("quick", False, "The rows' tiny configs: seconds, not a result.",
                    flag_values=values)
  common.define_cpu_devices(values)


def main(values: flags.FlagValues) -> None:
  unknown = [row for row in values.rows if row not in ROWS]
  if unknown or not values.rows:
    raise errors.UserError(f"--rows: {unknown or 'none'} are not Table 1 rows; choose one or "
                           f"more of {', '.join(ROWS)}.")
  configs = {row: importlib.import_module(f"{__package__}.configs.{row}").get_config(
      "tiny" if values.quick else "") for row in values.rows}
  common.show_cpu_devices(values, *(c.train.batch_size for c in configs.values()))
  from dpm_jax import outputs, registry, safety, table1, train  # pylint: disable=g-import-not-at-top
  reports = []
  for i, (row, config) in enumerate(configs.items()):
    print(f"Table 1, row {i + 1} of {len(configs)}: {row}", flush=True)
    workdir = os.path.join(values.workdir, row + ("_quick" if values.quick else ""))
    timing = os.path.join(workdir, "table1_row.json")
    done = outputs.read_json(os.path.join(workdir, "eval.json"))
    seconds = (outputs.read_json(timing) or {}).get("seconds")  # None: trained elsewhere
    start = time.time()
    state = train.train_and_evaluate(registry.get(row), config, workdir)
    if done is None or done["step"] != int(state.step):  # trained now: report again
      seconds = (seconds or 0.0) + time.time() - start
      outputs.write_json(timing, {"seconds": seconds})
      done = safety.stoppable("the final report (rerun to make it)",
                              lambda should_stop: common.final_report(workdir, config,
                                                                      should_stop))
    reports.append(dict(done, run=os.path.basename(workdir), steps=int(state.step),
                        seconds=seconds))
  table = table1.write_table(reports, values.workdir, quick=values.quick)
  stem = os.path.join(values.workdir, "table1_quick" if values.quick else "table1")
  print(table["markdown"] + f"wrote {stem}.md, .json, .png")


def run(argv) -> int:
  return common.run(__doc__, define, main, argv)


if __name__ == "__main__":
  common.cli(run)
