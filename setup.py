"""Build step for the start-up hook; the package metadata lives in setup.cfg.

Every wheel (normal or PEP 660 editable) gets ``espnet_snac_hook.pth`` at its root, i.e. in
site-packages once installed. Python runs it at start-up; it only installs the lazy import hook of
``espnet_snac.registry``, so any process that later imports ``espnet2.tasks.gan_codec`` (stock
``espnet2.bin`` tools, other recipes' scripts) finds ``snac`` registered. The file is listed in the
wheel's RECORD, so ``pip uninstall`` removes it.
"""
import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_NAME = "espnet_snac_hook.pth"
# site.py executes .pth lines that start with "import". A broken or half-removed package must never
# break interpreter start-up, hence the try/except; the import loads only espnet_snac/__init__.py
# and espnet_snac/registry.py (stdlib importlib), never torch or espnet2.
PTH_LINE = ('import sys; exec("try:\\n import espnet_snac.registry as r; r.register_when_imported()\\n'
            'except Exception:\\n pass")\n')


class build_py_with_hook(build_py):
    """``build_py`` that also writes the start-up ``.pth`` to the root of the wheel."""

    def _hook_dir(self) -> str:
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel packs the directory it set as install_lib (the unpacked
            # wheel) and discards build_lib, so the hook goes straight there.
            return self.get_finalized_command("install").install_lib
        return self.build_lib

    def run(self) -> None:
        super().run()
        target = self._hook_dir()
        os.makedirs(target, exist_ok=True)
        with open(os.path.join(target, PTH_NAME), "w", encoding="utf-8") as f:
            f.write(PTH_LINE)

    def get_outputs(self, *args, **kwargs):
        outputs = list(super().get_outputs(*args, **kwargs))
        if not getattr(self, "editable_mode", False):
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


setup(cmdclass={"build_py": build_py_with_hook})
