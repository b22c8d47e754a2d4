# Sourced by scripts/demo.sh and scripts/test.sh: installs the Debian/Ubuntu
# packages that are missing. `need COMMAND PACKAGE` for each, then
# `install_needed`. As root it runs apt-get; otherwise it prints the one
# sudo line to run and stops.

needed=()

# need COMMAND PACKAGE: PACKAGE provides COMMAND.
need() {
    command -v "$1" >/dev/null 2>&1 || needed+=("$2")
}

# need_postgres: the server binaries (initdb, pg_ctl), wherever Debian puts them.
need_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v pg_config >/dev/null 2>&1; then
        needed+=(postgresql)
    fi
    need psql postgresql-client
}

install_needed() {
    [ ${#needed[@]} -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "walcast needs: ${needed[*]} (Debian/Ubuntu package names); install them with your package manager, then run this again" >&2
        exit 1
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing packages; run this once, then this script again:" >&2
        echo "  sudo apt-get update && sudo apt-get install -y ${needed[*]}" >&2
        exit 1
    fi
    echo "installing: ${needed[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}"
}
