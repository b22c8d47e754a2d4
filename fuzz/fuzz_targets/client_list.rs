//! `CLIENT LIST` answers, as the Redis writer parses them to find the
//! connections of an earlier writer to close (`sink::redis::stale_writers`).
//! Input: arbitrary bytes, the first byte choosing the name looked for.
//! Nothing may panic; every id returned is on a line that has that id and
//! that name, and is never the writer's own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walcast::sink::redis::stale_writers;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let list = String::from_utf8_lossy(rest);
    let name = ["walcast-writer:walcast:{acme}:events", "", "a"][usize::from(pick % 3)];
    let own = i64::from(pick);
    for id in stale_writers(&list, name, own) {
        assert_ne!(id, own);
        let line = list.lines().find(|line| {
            let mut fields = line.split(' ');
            let has_id = fields
                .clone()
                .any(|f| f.strip_prefix("id=").and_then(|v| v.parse().ok()) == Some(id));
            has_id && fields.any(|f| f.strip_prefix("name=") == Some(name))
        });
        assert!(line.is_some(), "id {id} not on a line named {name:?}");
    }
});
