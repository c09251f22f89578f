//! The conformance suite of [`KeySpace`] implementations.

use std::io;

use super::{KeySpace, Writes};
use crate::types::GroupId;

fn records(pairs: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn all(space: &dyn KeySpace) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    space.scan(b"", None, usize::MAX)
}

/// Checks that `space_of` gives key spaces that behave as [`KeySpace`] documents: reads, ordered and bounded
/// scans, atomic commits with the applied mark, writes without it, clearing, frozen views unaffected by later
/// writes, and groups that do not see each other's records. `space_of(group)` must give an empty key space for
/// each of the groups 1 and 2 on first use. Panics (with the failing step) on a violation.
pub fn check_key_space<K: KeySpace>(space_of: impl Fn(GroupId) -> K) -> io::Result<()> {
    let a = space_of(1);
    let b = space_of(2);
    assert_eq!(a.applied()?, None, "a new key space has an applied mark");
    assert_eq!(all(&a)?, Vec::new(), "a new key space has records");

    let mut writes = Writes::new();
    for (k, v) in [("b", "2"), ("a", "1"), ("c", "3"), ("d", "4")] {
        writes.put(k, v);
    }
    a.commit(&writes, 7)?;
    assert_eq!(a.applied()?, Some(7));
    assert_eq!(a.get(b"a")?, Some(b"1".to_vec()));
    assert_eq!(a.get(b"zz")?, None);
    assert_eq!(
        all(&a)?,
        records(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")])
    );
    assert_eq!(
        a.scan(b"b", Some(b"d"), 10)?,
        records(&[("b", "2"), ("c", "3")]),
        "bounds"
    );
    assert_eq!(
        a.scan(b"b", None, 2)?,
        records(&[("b", "2"), ("c", "3")]),
        "limit"
    );
    assert_eq!(a.scan(b"c", Some(b"b"), 10)?, Vec::new(), "an empty range");
    assert_eq!(b.applied()?, None, "group 2 sees group 1's mark");
    assert_eq!(all(&b)?, Vec::new(), "group 2 sees group 1's records");

    let frozen = a.freeze()?;
    let mut writes = Writes::new();
    writes.delete("a");
    writes.put("b", "22");
    writes.put("e", "5");
    a.commit(&writes, 8)?;
    assert_eq!(a.applied()?, Some(8));
    assert_eq!(
        all(&a)?,
        records(&[("b", "22"), ("c", "3"), ("d", "4"), ("e", "5")])
    );
    let mut seen = Vec::new();
    frozen.for_each(&mut |k, v| {
        seen.push((k.to_vec(), v.to_vec()));
        Ok(())
    })?;
    assert_eq!(frozen.applied(), Some(7), "a frozen view's mark moved");
    assert_eq!(
        seen,
        records(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]),
        "a frozen view saw later writes"
    );

    let mut writes = Writes::new();
    writes.put("x", "9");
    a.write(&writes)?;
    assert_eq!(a.applied()?, Some(8), "a write without a mark moved it");
    assert_eq!(a.get(b"x")?, Some(b"9".to_vec()));

    b.commit(&Writes::new(), 3)?;
    a.clear()?;
    assert_eq!(a.applied()?, None, "clearing kept the mark");
    assert_eq!(all(&a)?, Vec::new(), "clearing kept records");
    assert_eq!(b.applied()?, Some(3), "clearing group 1 cleared group 2");
    Ok(())
}
