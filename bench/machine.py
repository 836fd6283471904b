"The machine line every benchmark prints beside its results."
import os, platform

import torch


def cpu_model():
    "The CPU's model name (from /proc/cpuinfo where there is one)."
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or 'unknown'


def machine():
    "Platform, Python, torch, threads, CPU, GPU and the load average at the time of the call."
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
    load = ', '.join(f'{v:.1f}' for v in os.getloadavg())
    return (f"{platform.platform()}; Python {platform.python_version()}; torch {torch.__version__}; "
            f"{torch.get_num_threads()} threads; CPU {cpu_model()}; GPU {gpu}; load average {load}")


def results_table(title, cmd, t0, device, note, rows, out):
    """Write the markdown results file every timing benchmark keeps (after each row, so a stopped run keeps what it
    measured): title, command, date, machine, device and run time, a note on the method, and the table of rows."""
    import datetime, time
    from pathlib import Path
    text = '\n'.join([
        f"# {title}", '', f"Command: `{cmd}`  ", f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {machine()}  ", f"Device: {device}; run time so far {time.time() - t0:.0f} s  ", note, '',
        '| case | anchor | reference | ours | ratio | notes |', '|---|---|---|---|---|---|', *rows, ''])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    return text
