#!/bin/sh
# certbot deploy hook: copy a renewed certificate where the dzone container's user (uid 10001) can read
# it. certbot keeps live/ and archive/ root-only (0700) and the key 0600, so the container cannot read
# them in place. Install once, then every renewal runs it:
#
#   install -m 0755 deploy/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/dzone
#   RENEWED_LINEAGE=/etc/letsencrypt/live/dzone.example.org /etc/letsencrypt/renewal-hooks/deploy/dzone
#
# The serve re-reads the pair when the files change (DZONE_TLS_RELOAD_INTERVAL_S): no restart needed.
# DZONE_TLS_DIR (default /etc/dzone/tls) and DZONE_TLS_UID (default 10001) change where and for whom.
set -eu
: "${RENEWED_LINEAGE:?certbot sets RENEWED_LINEAGE to the renewed certificate's live/ directory}"
target="${DZONE_TLS_DIR:-/etc/dzone/tls}"
owner="${DZONE_TLS_UID:-10001}"
install -d -m 0750 -o "$owner" -g 0 "$target"
# Certificate first, key last, each renamed into place: the serve never loads half a file, and a pair
# that does not match yet is kept out until the key arrives (tls_reload_failed_keeping_previous_pair).
for name in fullchain.pem privkey.pem; do
  install -m 0600 -o "$owner" -g 0 "$RENEWED_LINEAGE/$name" "$target/.$name.new"
  mv -f "$target/.$name.new" "$target/$name"
done
