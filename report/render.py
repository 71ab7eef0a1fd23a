"""Templates to HTML: one Jinja2 environment, autoescaping on, and a page policy that fetches nothing.

Every string that came from a task list, a request, a caption or a log is escaped by Jinja2's
autoescape; only what this package produced itself (matplotlib's SVG) is marked safe. The
Content-Security-Policy allows data: images, inline styles, and exactly the one script the
package ships (by its hash), so a page cannot fetch anything, and an injected ``<script>``
would not run even if escaping ever failed.
"""

from __future__ import annotations

import base64
import hashlib
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("report", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["size"] = human_size
    env.filters["seconds"] = human_seconds
    env.filters["number"] = number
    return env


@lru_cache(maxsize=1)
def _script() -> tuple[str, str]:
    text = resources.files("report").joinpath("templates", "page.js").read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return text, digest


def render(template: str, **context: Any) -> str:
    from markupsafe import Markup

    script, digest = _script()
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; "
           "base-uri 'none'; form-action 'none'")
    return environment().get_template(template).render(csp=csp, script=Markup(script), **context)


def write_page(path: Path, html: str) -> Path:
    """Written to a temporary name and renamed: a reader (or the S3 sync) never sees half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(html, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


def now_text() -> str:
    """When a page was written, as its footer says it."""
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def human_size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n:.1f} GB"


def human_seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {s % 60:02.0f} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def number(x: Any, digits: int = 4) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    return f"{x:.{digits}g}"
