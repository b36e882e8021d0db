use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    for (m, k, n) in [
        (512, 512, 1536),
        (512, 512, 3072),
        (512, 1536, 512),
        (32, 512, 1536),
        (32, 512, 3072),
        (32, 1536, 512),
        (32, 512, 32000),
    ] {
        let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
        for _ in 0..3 {
            a.matmul(&w.t().unwrap()).unwrap();
        }
        let r = 20;
        let t = Instant::now();
        for _ in 0..r {
            a.matmul(&w.t().unwrap()).unwrap();
        }
        let dt = t.elapsed().as_secs_f64() / r as f64;
        println!(
            "{m} {k} {n} {:.3} ms {:.1} GFLOP/s",
            dt * 1e3,
            2.0 * (m * k * n) as f64 / dt / 1e9
        );
    }
}
