#!/bin/sh
# The image's entrypoint: `run` (the default command) applies the migrations first, as `npm start` does;
# migrate is idempotent and takes an advisory lock, so replicas starting together are safe. Any other
# command (status, trigger, config check, …) runs as it is: docker run … l2flow status --json
set -e
cd /app
if [ "${1:-run}" = run ]; then
  bin/l2flow.js migrate
fi
# exec: node becomes PID 1 and receives docker's SIGTERM itself (l2flow stops gracefully on it).
exec bin/l2flow.js "$@"
