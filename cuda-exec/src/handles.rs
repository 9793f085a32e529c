//! The backend's own handles (the real driver's `CUstream`, `CUevent`, ... as integers; the emulated backend's
//! counters), one type per kind, so that a client id (`vgpu_dataplane::ids`) can never reach the driver unmapped.
//!
//! The session maps each client id to one of these; only the backends create and interpret them.

macro_rules! backend_handles {
    ($( $(#[$doc:meta])* $name:ident; )*) => {
        $(
            $(#[$doc])*
            #[repr(transparent)]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
            pub struct $name(pub u64);

            impl $name {
                pub const fn get(self) -> u64 {
                    self.0
                }
            }
        )*
    };
}

backend_handles! {
    /// A context (`CUcontext`).
    Context;
    /// A stream (`CUstream`); 0, 1 and 2 are the driver's NULL, legacy and per-thread streams.
    Stream;
    /// An event (`CUevent`).
    Event;
    /// A module (`CUmodule`).
    Module;
    /// A library (`CUlibrary`).
    Library;
    /// A module's function (`CUfunction`).
    Function;
    /// A library's kernel (`CUkernel`).
    Kernel;
    /// A memory pool (`CUmemoryPool`).
    MemPool;
    /// A CUDA array (`CUarray`).
    Array;
    /// Physical memory of the virtual memory management API (`CUmemGenericAllocationHandle`).
    AllocHandle;
    /// A CUDA graph (`CUgraph`).
    Graph;
    /// A node of a graph (`CUgraphNode`).
    GraphNode;
    /// An executable graph (`CUgraphExec`).
    GraphExec;
}

impl Stream {
    /// The NULL stream.
    pub const NULL: Stream = Stream(0);
    /// `CU_STREAM_PER_THREAD`: the calling thread's per-thread default stream.
    pub const PER_THREAD: Stream = Stream(2);

    /// The stream a synchronous call runs on: the per-thread stream for `_ptsz`/`_ptds` entry points.
    pub const fn default_for(per_thread: bool) -> Stream {
        if per_thread {
            Stream::PER_THREAD
        } else {
            Stream::NULL
        }
    }
}

/// Something a launch or an attribute query names: a module's function or a library's kernel (the driver accepts
/// a `CUkernel` wherever a `CUfunction` is launched; attribute calls differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Callable {
    Function(Function),
    Kernel(Kernel),
}

impl Callable {
    /// The handle's value (what a launch passes as the `CUfunction`).
    pub const fn raw(self) -> u64 {
        match self {
            Callable::Function(f) => f.0,
            Callable::Kernel(k) => k.0,
        }
    }

    pub const fn is_kernel(self) -> bool {
        matches!(self, Callable::Kernel(_))
    }
}
