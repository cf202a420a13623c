"""Hidden-state variability per layer for the committed results: `python -m dwatt.variability` with the command and
the commit recorded as the other benchmarks record them (benchmarks/report.py reads the JSON it writes).

    python benchmarks/variability.py --encoder PATH --data ../shared/data/glue/SST-2 --max-examples 1000 \\
        --out benchmarks/results/variability/minilm_SST-2
"""

import sys

from provenance import command_line, git_commit

from dwatt import variability

if __name__ == "__main__":
    argv = sys.argv[1:]
    variability.main(argv, provenance={"command": command_line("variability.py", argv),
                                       "git_commit": git_commit()})
