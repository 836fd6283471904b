"Reads settings.ini, as the nbdev template does: settings.ini is the single source of metadata."
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent/'settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
for k in 'version description keywords author author_email license min_python lib_name'.split():
    assert k in cfg, f'settings.ini is missing {k!r}'

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses.get(cfg['license'].lower())
reqs = lambda key: cfg.get(key, '').split()
console_scripts = cfg.get('console_scripts', '').split()
readme = Path(__file__).parent/'README.md'

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=readme.read_text(encoding='utf-8') if readme.exists() else '',
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'], author_email=cfg['author_email'],
    license=lic[0] if lic else cfg['license'],
    classifiers=['Programming Language :: Python :: 3', 'Framework :: Jupyter',
                 f'Development Status :: {cfg["status"]} - Alpha'] + ([f'License :: {lic[1]}'] if lic else []),
    python_requires=f'>={cfg["min_python"]}',
    packages=setuptools.find_packages(include=[cfg['lib_path'], cfg['lib_path'] + '.*']),
    include_package_data=True,
    install_requires=reqs('requirements'),
    extras_require={'dev': reqs('dev_requirements'), 'bench': reqs('bench_requirements')},
    entry_points={'console_scripts': console_scripts},
    zip_safe=False,
)
