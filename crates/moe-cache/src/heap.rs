//! An indexed binary min-heap over dense ids `0..n`: the priority queue
//! behind LFU, LRFU and Belady.
//!
//! Three flat arrays (`heap` of ids, `pos` of heap positions, `keys`), all
//! allocated once at construction: push, update, remove are O(log n), peek
//! O(1), and nothing allocates per operation. Keys must be totally ordered
//! and, for deterministic tie-breaking, distinct (policies fold a unique
//! timestamp into them).

const ABSENT: u32 = u32::MAX;

#[derive(Debug, Clone)]
pub(crate) struct IndexedHeap<K> {
    heap: Vec<u32>,
    pos: Vec<u32>,
    keys: Vec<K>,
    /// Scratch stack for [`IndexedHeap::min_unpinned`], sized once.
    stack: Vec<u32>,
}

impl<K: Copy + PartialOrd + Default> IndexedHeap<K> {
    /// A heap for ids `0..n` (`n < u32::MAX`, checked by the policies' constructors).
    pub(crate) fn new(n: usize) -> Self {
        Self {
            heap: Vec::with_capacity(n),
            pos: vec![ABSENT; n],
            keys: vec![K::default(); n],
            stack: Vec::with_capacity(n),
        }
    }

    pub(crate) fn contains(&self, id: usize) -> bool {
        self.pos[id] != ABSENT
    }

    pub(crate) fn key(&self, id: usize) -> K {
        self.keys[id]
    }

    pub(crate) fn clear(&mut self) {
        for &id in &self.heap {
            self.pos[id as usize] = ABSENT;
        }
        self.heap.clear();
    }

    /// Inserts `id` with `key`, or updates its key if present.
    pub(crate) fn set(&mut self, id: usize, key: K) {
        self.keys[id] = key;
        if self.pos[id] == ABSENT {
            let at = self.heap.len();
            self.heap.push(id as u32);
            self.pos[id] = at as u32;
            self.sift_up(at);
        } else {
            let at = self.pos[id] as usize;
            self.sift_up(at);
            let at = self.pos[id] as usize;
            self.sift_down(at);
        }
    }

    pub(crate) fn remove(&mut self, id: usize) {
        let at = self.pos[id];
        if at == ABSENT {
            return;
        }
        let at = at as usize;
        let last = self.heap.len() - 1;
        self.swap(at, last);
        self.heap.pop();
        self.pos[id] = ABSENT;
        if at < self.heap.len() {
            // The former last element now sits at `at`: restore order both ways.
            let moved = self.heap[at] as usize;
            self.sift_up(at);
            let at = self.pos[moved] as usize;
            self.sift_down(at);
        }
    }

    /// The id with the smallest key whose `pinned` flag is false.
    ///
    /// Depth-first search from the root that stops at the first unpinned node
    /// of every path: the minimum unpinned id is an unpinned node whose
    /// ancestors are all pinned, so at most `2p + 1` nodes are visited for `p`
    /// pinned ids, with no mutation of the heap.
    pub(crate) fn min_unpinned(&mut self, pinned: &[bool]) -> Option<usize> {
        if self.heap.is_empty() {
            return None;
        }
        let mut best: Option<usize> = None;
        self.stack.clear();
        self.stack.push(0);
        while let Some(at) = self.stack.pop() {
            let at = at as usize;
            let id = self.heap[at] as usize;
            if !pinned[id] {
                let better = match best {
                    None => true,
                    Some(b) => self.keys[id] < self.keys[b],
                };
                if better {
                    best = Some(id);
                }
                continue;
            }
            for child in [2 * at + 1, 2 * at + 2] {
                if child < self.heap.len() {
                    self.stack.push(child as u32);
                }
            }
        }
        best
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a] as usize] = a as u32;
        self.pos[self.heap[b] as usize] = b as u32;
    }

    fn less(&self, a: usize, b: usize) -> bool {
        self.keys[self.heap[a] as usize] < self.keys[self.heap[b] as usize]
    }

    fn sift_up(&mut self, mut at: usize) {
        while at > 0 {
            let parent = (at - 1) / 2;
            if self.less(at, parent) {
                self.swap(at, parent);
                at = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut at: usize) {
        let n = self.heap.len();
        loop {
            let l = 2 * at + 1;
            let r = l + 1;
            let mut smallest = at;
            if l < n && self.less(l, smallest) {
                smallest = l;
            }
            if r < n && self.less(r, smallest) {
                smallest = r;
            }
            if smallest == at {
                break;
            }
            self.swap(at, smallest);
            at = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_unpinned_matches_a_scan() {
        let mut h = IndexedHeap::<u64>::new(16);
        let keys = [9u64, 3, 14, 1, 7, 12, 5, 0, 11, 2];
        for (id, &k) in keys.iter().enumerate() {
            h.set(id, k);
        }
        h.set(4, 20);
        h.remove(2);
        let mut pinned = vec![false; 16];
        for p in [7usize, 3, 9] {
            pinned[p] = true;
        }
        let expected = (0..10)
            .filter(|&i| h.contains(i) && !pinned[i])
            .min_by_key(|&i| h.key(i));
        assert_eq!(h.min_unpinned(&pinned), expected);
        assert_eq!(expected, Some(1));
        let all = vec![true; 16];
        assert_eq!(h.min_unpinned(&all), None);
    }
}
