#!/usr/bin/env bash
# Mutation testing of the decoding core (gemma_mtp/speculative.py, modeling.py, sampling.py) with mutmut 3.
#
# An occasional check, not a CI step: it shows whether the tests see a wrong draft, a wrong acceptance or a
# loss of exactness. Configuration (files, tests run against each mutant) is [tool.mutmut] in pyproject.toml;
# what the last run found, and the surviving mutants known to be equivalent, are in tests/README.md.
#
#   scripts/mutation_test.sh                          # every mutant of the three files (hours on 2 cores)
#   scripts/mutation_test.sh 'gemma_mtp.speculative*'  # one module's mutants
#   MUTMUT_CHILDREN=4 scripts/mutation_test.sh        # parallel workers (default 2)
#
# Then `python -m mutmut results` lists survivors and `python -m mutmut show NAME` prints one as a diff.
# mutmut works in ./mutants (ignored by git); delete it to start afresh after changing the code.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"
python -m mutmut results
