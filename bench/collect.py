"Assemble bench/RESULTS.md from the per-benchmark files that each bench/*.py writes into bench/results/."
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ['demo_recipe', 'transfer', 'augment', 'invariance', 'interpret']

parts = ['# Benchmark results\n',
         'Each section below is written by its script (command, machine and date inside); regenerate a section by '
         'rerunning its command, then `python bench/collect.py`. Figures are measured, never typed in.\n']
files = sorted((HERE/'results').glob('*.md'), key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else 99, p.stem))
parts += [f.read_text().replace('](invariance_', '](results/invariance_') for f in files]
logs = sorted((HERE/'results').glob('variants_*.txt'))  # bench/transfer_variants.py output, kept verbatim
if logs:
    parts.append('# fine_tune_gradual variants, paired by seed (bench/transfer_variants.py)\n\n' + '\n\n'.join(
        f'{f.stem}:\n```\n{f.read_text().strip()}\n```' for f in logs))
(HERE/'RESULTS.md').write_text('\n\n'.join(parts))
print(f'wrote {HERE/"RESULTS.md"} from {len(files)} files')
