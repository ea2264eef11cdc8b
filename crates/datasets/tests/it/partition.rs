//! Dirichlet label partitions cover every index once, and small α skews clients.

use lastmile_datasets::{digits, dirichlet_partition};

/// Mean Shannon entropy (nats) of the non-empty clients' label histograms.
fn mean_client_entropy(clients: &[Vec<usize>], labels: &[usize], n_classes: usize) -> f64 {
    let mut total = 0.0;
    let mut non_empty = 0;
    for client in clients.iter().filter(|c| !c.is_empty()) {
        let mut hist = vec![0usize; n_classes];
        for &i in client {
            hist[labels[i]] += 1;
        }
        let n = client.len() as f64;
        total -= hist
            .iter()
            .filter(|&&c| c > 0)
            .map(|&c| {
                let p = c as f64 / n;
                p * p.ln()
            })
            .sum::<f64>();
        non_empty += 1;
    }
    total / f64::from(non_empty)
}

#[test]
fn every_index_assigned_exactly_once() {
    let ds = digits().expect("digits");
    let labels = ds.labels().expect("classification");
    for (n_clients, alpha) in [(1, 1.0), (5, 0.01), (10, 0.5), (20, 100.0), (3000, 1.0)] {
        let clients = dirichlet_partition(labels, 10, n_clients, alpha, 9).expect("valid");
        assert_eq!(clients.len(), n_clients);
        let mut seen = vec![0u8; labels.len()];
        for client in &clients {
            assert!(client.windows(2).all(|w| w[0] < w[1]), "ascending");
            for &i in client {
                seen[i] += 1;
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "n_clients={n_clients} alpha={alpha}"
        );
    }
}

#[test]
fn seeded_and_reproducible() {
    let ds = digits().expect("digits");
    let labels = ds.labels().expect("classification");
    let a = dirichlet_partition(labels, 10, 8, 0.5, 1).expect("valid");
    assert_eq!(
        a,
        dirichlet_partition(labels, 10, 8, 0.5, 1).expect("valid")
    );
    assert_ne!(
        a,
        dirichlet_partition(labels, 10, 8, 0.5, 2).expect("valid")
    );
}

#[test]
fn small_alpha_skews_client_label_histograms() {
    let ds = digits().expect("digits");
    let labels = ds.labels().expect("classification");
    let max_entropy = 10f64.ln();
    let mut entropies = Vec::new();
    for alpha in [0.05, 0.5, 100.0] {
        let mut mean = 0.0;
        for seed in 0..5 {
            let clients = dirichlet_partition(labels, 10, 10, alpha, seed).expect("valid");
            mean += mean_client_entropy(&clients, labels, 10) / 5.0;
        }
        entropies.push(mean);
    }
    // Large α is close to IID (near-uniform label histograms), small α is skewed.
    assert!(entropies[2] > 0.95 * max_entropy, "{entropies:?}");
    assert!(
        entropies[0] < entropies[1] && entropies[1] < entropies[2],
        "{entropies:?}"
    );
    assert!(entropies[0] < 0.5 * max_entropy, "{entropies:?}");
}
