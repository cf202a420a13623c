"""Attention pattern mass per layer and head for the committed results: `python -m dwatt.attention_patterns` with the
command and the commit recorded as the other benchmarks record them (benchmarks/report.py reads the JSON it writes).

    python benchmarks/attention_patterns.py --model PATH --data ../shared/data/glue/SST-2 \\
        --out benchmarks/results/attention_patterns/minilm_SST-2
"""

import sys

from provenance import command_line, git_commit

from dwatt import attention_patterns

if __name__ == "__main__":
    argv = sys.argv[1:]
    attention_patterns.main(argv, provenance={"command": command_line("attention_patterns.py", argv),
                                              "git_commit": git_commit()})
