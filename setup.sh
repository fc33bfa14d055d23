#!/usr/bin/env bash
# Sets up everything on a fresh Debian 12 (bookworm) machine; safe to run again.
#   1. QGIS 3.40 LTR from bookworm-backports (python3-qgis, qgis-providers, qgis),
#      skipped when it is already installed;
#   2. a venv in .venv made from /usr/bin/python3 with --system-site-packages
#      (so it sees Debian's qgis, PyQt5 and osgeo);
#   3. this project, editable, as the package `landcover` with its pinned requirements;
#   4. the QGIS plugin: the venv's interpreter recorded for it (plugin/engine_python.txt),
#      this folder linked into the QGIS profile as `landcover` and enabled
#      (QGIS_CUSTOM_CONFIG_PATH picks another QGIS config folder).
# Usage: ./setup.sh            (set LANDCOVER_SKIP_QGIS=1 to skip step 1)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LANDCOVER_VENV:-$ROOT/.venv}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[setup] %s\n' "$*"; }

qgis_version() {
    dpkg-query -W -f='${Status} ${Version}\n' python3-qgis 2>/dev/null \
        | awk '$3 == "installed" {print $4}' || true
}

enable_backports() {
    # Reuse the mirror the machine already uses: add the suite to its Debian entry.
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
        return
    fi
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        $SUDO sed -i -E '0,/^Suites:(.* )?bookworm( .*)?$/ s/^(Suites:(.* )?bookworm( .*)?)$/\1 bookworm-backports/' \
            /etc/apt/sources.list.d/debian.sources
    elif [ -f /etc/apt/sources.list ]; then
        line="$(grep -E '^deb .* bookworm( |$)' /etc/apt/sources.list | head -n 1)"
        [ -n "$line" ] || { echo "setup.sh: no bookworm entry in /etc/apt/sources.list; add bookworm-backports by hand" >&2; exit 1; }
        echo "$line" | sed -E 's/ bookworm( |$)/ bookworm-backports\1/' | $SUDO tee -a /etc/apt/sources.list >/dev/null
    else
        echo "setup.sh: no Debian apt source found; is this Debian 12?" >&2
        exit 1
    fi
}

install_qgis() {
    local have
    have="$(qgis_version)"
    case "$have" in
        1:3.4[0-9]*|3.4[0-9]*)
            log "QGIS $have already installed"
            return ;;
    esac
    log "installing QGIS 3.40 LTR from bookworm-backports (a few minutes)"
    enable_backports
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        -t bookworm-backports python3-qgis qgis-providers qgis python3-venv >/dev/null
    log "QGIS $(qgis_version) installed"
}

make_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV (from /usr/bin/python3, with system site-packages)"
        /usr/bin/python3 -m venv --system-site-packages "$VENV"
    fi
    log "installing the project and its pinned requirements"
    "$VENV/bin/python" -m pip install -q --upgrade "pip>=23.2"
    "$VENV/bin/python" -m pip install -q -e "$ROOT[train,dev]"
}

record_engine_python() {
    # The QGIS plugin runs the engine in a child process with this interpreter
    # (plugin/settings.py; LANDCOVER_PYTHON or the plugin's settings override it).
    printf '%s\n' "$VENV/bin/python" > "$ROOT/plugin/engine_python.txt"
}

install_plugin() {
    # Link this folder into the QGIS profile as the plugin `landcover` and enable it, so
    # QGIS and `qgis_process run landcover:segmentlandcover ...` find it.
    local config="${QGIS_CUSTOM_CONFIG_PATH:-$HOME/.local/share/QGIS/QGIS3}"
    local plugins="$config/profiles/default/python/plugins"
    mkdir -p "$plugins"
    if [ -e "$plugins/landcover" ] && [ ! -L "$plugins/landcover" ]; then
        log "warning: $plugins/landcover is not a link to this clone; left as it is"
    else
        ln -sfn "$ROOT" "$plugins/landcover"
    fi
    if command -v qgis_process >/dev/null 2>&1; then
        # (it exits 1 with "Plugin is already enabled!" on a second run)
        local said
        if said="$(QT_QPA_PLATFORM=offscreen qgis_process plugins enable landcover 2>&1)" \
            || [[ "$said" == *"already enabled"* ]]; then
            log "QGIS plugin 'landcover' linked into $plugins and enabled"
        else
            log "warning: could not enable the QGIS plugin 'landcover'; qgis_process said:"
            printf '%s\n' "$said" >&2
        fi
    fi
}

if [ "${LANDCOVER_SKIP_QGIS:-0}" != "1" ]; then install_qgis; fi
make_venv
record_engine_python
install_plugin
log "done: activate with  source $VENV/bin/activate  (command: landcover --help)"
