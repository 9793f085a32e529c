//! Stand-alone control plane binary (`vgpu control` without the rest of vgpu), used by the crash test and
//! the UI test, which need it as a separate process they can kill.

use clap::Parser;

#[derive(Parser)]
#[command(name = "vgpu-control", about = "vGPU control plane")]
struct Cli {
    #[command(flatten)]
    args: vgpu_control::ControlArgs,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = vgpu_control::run_control(cli.args) {
        eprintln!("vgpu-control: {e}");
        std::process::exit(1);
    }
}
