use candle_core::{Device, Tensor};
use std::time::Instant;
fn main() {
    let a = Tensor::rand(0f32, 1f32, (2304, 16, 14, 14), &Device::Cpu).unwrap();
    let w = Tensor::rand(0f32, 1f32, (16, 1, 4, 4), &Device::Cpu).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let r = a.conv_transpose2d(&w, 1, 0, 2, 1).unwrap();
        println!("conv_transpose {:?} {:?}", r.dims(), t.elapsed());
    }
    let x = Tensor::rand(0f32, 1f32, (256, 1, 28, 28), &Device::Cpu).unwrap();
    let w2 = Tensor::rand(0f32, 1f32, (16, 1, 4, 4), &Device::Cpu).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let r = x.conv2d(&w2, 1, 2, 1, 1).unwrap();
        println!("conv2d fwd {:?} {:?}", r.dims(), t.elapsed());
    }
    let big = Tensor::rand(0f32, 1f32, (2304, 3136), &Device::Cpu).unwrap();
    let wl = Tensor::rand(0f32, 1f32, (100, 3136), &Device::Cpu).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let r = big.matmul(&wl.t().unwrap()).unwrap();
        println!("matmul {:?} {:?}", r.dims(), t.elapsed());
    }
}
