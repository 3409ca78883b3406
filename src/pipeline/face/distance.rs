//! The exact squared Euclidean distance transform that the paste-back feathering measures with.

/// Stands for "no mask pixel here" in the distance transform: larger than any squared distance,
/// small enough to stay finite in its arithmetic.
pub(super) const FAR: f64 = 1e18;

/// Exact squared Euclidean distance transform in place (Felzenszwalb and Huttenlocher's lower
/// envelope of parabolas, rows then columns): each value becomes the squared distance to the nearest
/// 0 cell (cells start as 0 or [`FAR`]).
pub(super) fn squared_distance_transform(grid: &mut [f64], w: usize, h: usize) {
    let n = w.max(h);
    let mut line = vec![0.0; n];
    let mut out = vec![0.0; n];
    let mut sites = vec![0usize; n];
    let mut bounds = vec![0.0; n + 1];
    for y in 0..h {
        line[..w].copy_from_slice(&grid[y * w..(y + 1) * w]);
        lower_envelope(&line[..w], &mut out[..w], &mut sites, &mut bounds);
        grid[y * w..(y + 1) * w].copy_from_slice(&out[..w]);
    }
    for x in 0..w {
        for y in 0..h {
            line[y] = grid[y * w + x];
        }
        lower_envelope(&line[..h], &mut out[..h], &mut sites, &mut bounds);
        for y in 0..h {
            grid[y * w + x] = out[y];
        }
    }
}

/// One dimension of [`squared_distance_transform`]: `out[q] = min_p (q - p)^2 + f[p]`.
fn lower_envelope(f: &[f64], out: &mut [f64], sites: &mut [usize], bounds: &mut [f64]) {
    let n = f.len();
    if n == 0 {
        return;
    }
    let intersect = |p: usize, q: usize| {
        let (pf, qf) = (p as f64, q as f64);
        ((f[q] + qf * qf) - (f[p] + pf * pf)) / (2.0 * (qf - pf))
    };
    let mut k = 0;
    sites[0] = 0;
    bounds[0] = f64::NEG_INFINITY;
    bounds[1] = f64::INFINITY;
    for q in 1..n {
        let mut s = intersect(sites[k], q);
        while s <= bounds[k] {
            k -= 1;
            s = intersect(sites[k], q);
        }
        k += 1;
        sites[k] = q;
        bounds[k] = s;
        bounds[k + 1] = f64::INFINITY;
    }
    k = 0;
    for (q, value) in out.iter_mut().enumerate() {
        while bounds[k + 1] < q as f64 {
            k += 1;
        }
        let d = q as f64 - sites[k] as f64;
        *value = d * d + f[sites[k]];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_is_exact() {
        let (w, h) = (9, 7);
        let seeds = [(1usize, 1usize), (7, 5), (4, 0)];
        let mut grid = vec![FAR; w * h];
        for &(x, y) in &seeds {
            grid[y * w + x] = 0.0;
        }
        squared_distance_transform(&mut grid, w, h);
        for y in 0..h {
            for x in 0..w {
                let want = seeds
                    .iter()
                    .map(|&(sx, sy)| {
                        let (dx, dy) = (x as f64 - sx as f64, y as f64 - sy as f64);
                        dx * dx + dy * dy
                    })
                    .fold(f64::INFINITY, f64::min);
                assert_eq!(grid[y * w + x], want, "({x}, {y})");
            }
        }
    }
}
