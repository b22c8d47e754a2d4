#!/usr/bin/env bash
# Seeds the fuzz corpora from the pgoutput messages captured from a real
# Postgres (src/decode/testdata/captured.hex): one file per message for
# `decode`; relation + change pairs, framed as the `apply` target reads them;
# a captured batch answer for `redis_reply`.
set -euo pipefail
cd "$(dirname "$0")"
hex=../src/decode/testdata/captured.hex
mkdir -p corpus/decode corpus/apply
msg() { awk -v n="$1" '$1 == n { print $2 }' "$hex"; }
frame() { local h; h=$(msg "$1"); printf '%04x%s' $(( ${#h} / 2 )) "$h"; }
grep -v '^#' "$hex" | while read -r name h; do
    echo "$h" | xxd -r -p > "corpus/decode/$name"
done
for pair in relation_tasks:insert_tasks relation_tasks:update_new_only \
    relation_tasks:update_with_key relation_tasks:delete_with_key \
    relation_nokey_full:update_with_old relation_nokey_full:delete_with_old \
    relation_t2:update_unchanged_toast relation_tasks:truncate_cascade_restart \
    relation_tasks:message_transactional; do
    rel=${pair%%:*} change=${pair##*:}
    echo "$(frame "$rel")$(frame "$change")$(frame "$change")" | xxd -r -p > "corpus/apply/$rel-$change"
done
# redis_reply: a batch's answers as Redis 7.0.15 sent them (the unit test
# in src/sink/redis/resp.rs holds the same bytes).
mkdir -p corpus/redis_reply
printf '+OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*4\r\n$-1\r\n$10\r\n23803720-0\r\n:8\r\n-ERR The ID specified in XADD is equal or smaller than the target stream top item\r\n' \
    > corpus/redis_reply/batch_answer
echo "seeded $(ls corpus/decode | wc -l) decode, $(ls corpus/apply | wc -l) apply and $(ls corpus/redis_reply | wc -l) redis_reply inputs"
