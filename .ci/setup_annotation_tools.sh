#!/usr/bin/env bash
# Install the real annotation tools that det_al's integration tests drive, each in its own
# virtual environment (they pin Django/numpy/opencv/Pillow versions that clash with det_al's):
#
#   label-studio            -> $DET_AL_LS_VENV  (default /tmp/ls-venv)
#                              + a migrated template database in $DET_AL_LS_VENV/det_al-data-template
#                              (the server test copies it: saves the 1-2 min of first-start migrations)
#   datumaro + cvat-sdk     -> $DET_AL_DM_VENV  (default /tmp/dm-venv)
#
# Idempotent: an environment that already has the pinned version is kept. The tests find the
# tools at the default paths; with other paths, export what this script prints at the end.
set -euo pipefail

PYTHON=${PYTHON:-python3}
LS_VENV=${DET_AL_LS_VENV:-/tmp/ls-venv}
DM_VENV=${DET_AL_DM_VENV:-/tmp/dm-venv}
# label-studio 1.23.2 allows any sentry-sdk>=2.16, but every label-studio command fails at start
# with sentry-sdk 3 ("Unknown option 'send_default_pii'"): pin the last 2.x it works with.
LS_SPEC=${DET_AL_LS_SPEC:-label-studio==1.23.2 sentry-sdk==2.76.0}
DM_SPECS=${DET_AL_DM_SPECS:-datumaro==1.13.12 cvat-sdk==2.80.0}

# venv_with DIR SPEC...: make DIR a virtual environment holding every SPEC (name==version)
venv_with() {
    local dir=$1; shift
    local missing=()
    for spec in "$@"; do
        local name=${spec%%==*} version=${spec#*==}
        if [ -x "$dir/bin/python" ] \
            && [ "$("$dir/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')" = "$version" ]; then
            echo "  $name $version already in $dir"
        else
            missing+=("$spec")
        fi
    done
    if [ ${#missing[@]} -gt 0 ]; then
        [ -x "$dir/bin/python" ] || "$PYTHON" -m venv "$dir"
        echo "  installing ${missing[*]} into $dir"
        "$dir/bin/python" -m pip install -q --disable-pip-version-check "${missing[@]}"
    fi
}

start=$(date +%s)
echo "label-studio:"
# shellcheck disable=SC2086
venv_with "$LS_VENV" $LS_SPEC
template="$LS_VENV/det_al-data-template"
if [ ! -f "$template/label_studio.sqlite3" ]; then
    echo "  migrating a template database into $template"
    rm -rf "$template.tmp"
    # Sentry off (empty DSNs), as Label Studio's maintainers advise for offline use.
    LABEL_STUDIO_BASE_DATA_DIR="$template.tmp" LABEL_STUDIO_LATEST_VERSION_CHECK=false \
        SENTRY_DSN= FRONTEND_SENTRY_DSN= \
        "$LS_VENV/bin/label-studio" version > /dev/null
    mv "$template.tmp" "$template"
else
    echo "  template database already in $template"
fi

"$LS_VENV/bin/python" -c "import sentry_sdk; print('  sentry-sdk', sentry_sdk.VERSION)"

echo "datumaro + cvat-sdk:"
# shellcheck disable=SC2086
venv_with "$DM_VENV" $DM_SPECS
"$DM_VENV/bin/python" -c "import datumaro, cvat_sdk; print('  datumaro', datumaro.__version__, '/ cvat-sdk', cvat_sdk.__version__)"

echo "annotation tools ready in $(( $(date +%s) - start )) s; the tests use:"
echo "  export DET_AL_LABEL_STUDIO=$LS_VENV/bin/label-studio"
echo "  export DET_AL_DATUMARO_PYTHON=$DM_VENV/bin/python"
echo "  export DET_AL_REQUIRE_ANNOTATION_TOOLS=1   # CI: fail instead of skipping when a tool is missing"
