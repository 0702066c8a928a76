//! Post-processing of label maps: MONAI's `KeepLargestConnectedComponent(independent=True,
//! connectivity=None)`, which the UNETR paper's BTCV submission used: per label value, only its largest
//! 26-connected component is kept, the rest becomes background.

/// Keeps, for every non-zero label value of the [D, H, W] map, its largest 26-connected component.
pub fn keep_largest_component(labels: &mut [f32], d: [usize; 3]) {
    let n = d[0] * d[1] * d[2];
    debug_assert_eq!(labels.len(), n);
    let mut comp = vec![u32::MAX; n];
    // Per label value: (component id, size) of its largest component.
    let mut best: std::collections::HashMap<u32, (u32, usize)> = std::collections::HashMap::new();
    let mut stack = Vec::new();
    let mut next = 0u32;
    for start in 0..n {
        let v = labels[start];
        if v <= 0.0 || comp[start] != u32::MAX {
            continue;
        }
        let id = next;
        next += 1;
        comp[start] = id;
        stack.push(start);
        let mut size = 0usize;
        while let Some(i) = stack.pop() {
            size += 1;
            let p = [i / (d[1] * d[2]), (i / d[2]) % d[1], i % d[2]];
            for dz in -1i64..=1 {
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let q = [p[0] as i64 + dz, p[1] as i64 + dy, p[2] as i64 + dx];
                        if (0..3).any(|a| q[a] < 0 || q[a] >= d[a] as i64) {
                            continue;
                        }
                        let j = (q[0] as usize * d[1] + q[1] as usize) * d[2] + q[2] as usize;
                        if comp[j] == u32::MAX && labels[j] == v {
                            comp[j] = id;
                            stack.push(j);
                        }
                    }
                }
            }
        }
        let e = best.entry(v as u32).or_insert((id, 0));
        if size > e.1 {
            *e = (id, size);
        }
    }
    for i in 0..n {
        if labels[i] > 0.0 && best.get(&(labels[i] as u32)).is_some_and(|b| b.0 != comp[i]) {
            labels[i] = 0.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two class-1 blobs (the smaller one goes), a class-2 blob touching the larger one only diagonally
    /// (a separate value, kept), and a class-1 voxel joined to the large blob through a corner (kept:
    /// 26-connectivity).
    #[test]
    fn only_the_largest_component_of_each_value_remains() {
        let d = [6, 6, 6];
        let at = |i: usize, j: usize, k: usize| (i * 6 + j) * 6 + k;
        let mut l = vec![0f32; 216];
        for i in 0..2 {
            for j in 0..2 {
                for k in 0..2 {
                    l[at(i, j, k)] = 1.0; // 8 voxels
                }
            }
        }
        l[at(2, 2, 2)] = 1.0; // corner-connected to (1, 1, 1)
        l[at(5, 5, 5)] = 1.0;
        l[at(5, 5, 4)] = 1.0; // a 2-voxel blob: removed
        l[at(3, 3, 3)] = 2.0;
        keep_largest_component(&mut l, d);
        assert_eq!(l.iter().filter(|&&v| v == 1.0).count(), 9);
        assert_eq!((l[at(5, 5, 5)], l[at(2, 2, 2)], l[at(3, 3, 3)]), (0.0, 1.0, 2.0));
    }
}
