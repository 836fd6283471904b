"Reads settings.ini, as the nbdev template does: settings.ini is the single source of metadata."
from configparser import ConfigParser
from pathlib import Path
import setuptools

here = Path(__file__).parent
cfg = ConfigParser(delimiters=['='])
if not cfg.read(here/'settings.ini', encoding='utf-8'):
    raise SystemExit(f"settings.ini not found next to setup.py in {here}: an sdist must ship it (see MANIFEST.in)")
cfg = cfg['DEFAULT']
for k in 'version description keywords author author_email license min_python lib_name'.split():
    assert k in cfg, f'settings.ini is missing {k!r}'

reqs = lambda key: cfg.get(key, '').split()
extras = {'weights': reqs('weights_requirements'), 'distributed': reqs('distributed_requirements'),
          'dev': reqs('dev_requirements'), 'bench': reqs('bench_requirements')}
readme = here/'README.md'

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'],
    license_expression=cfg['license'],  # SPDX (PEP 639); no license classifier, setuptools deprecates them
    license_files=['LICENSE'],
    classifiers=['Programming Language :: Python :: 3', 'Framework :: Jupyter',
                 f'Development Status :: {cfg["status"]} - Alpha'],
    python_requires=f'>={cfg["min_python"]}',
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=reqs('requirements'),
    extras_require=extras,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split()},
    zip_safe=False,
)
