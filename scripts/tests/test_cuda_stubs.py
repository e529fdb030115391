"""Tests of scripts/cuda-stubs.py: the stub CUDA libraries the CUDA build links against (and the
cuRAND stub the GPU check carries). They are built here with `cc` from a small binding module of
cudarc's shape, then loaded and called."""
from __future__ import annotations

import ctypes
import importlib.util
import os
import tempfile
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location("cuda_stubs", HERE.parent / "cuda-stubs.py")
stubs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stubs)

BINDING = '''
pub unsafe fn curandCreateGenerator(generator: *mut curandGenerator_t, rng_type: curandRngType_t) -> curandStatus_t {
    #[cfg(not(feature = "dynamic-loading"))]
    {
        extern "C" {
            fn curandCreateGenerator(generator: *mut curandGenerator_t, rng_type: curandRngType_t) -> curandStatus_t;
        }
        curandCreateGenerator(generator, rng_type)
    }
}
pub unsafe fn curandGenerateUniform(generator: curandGenerator_t, outputPtr: *mut f32, num: usize) -> curandStatus_t {
    extern "C" {
        fn curandGenerateUniform(generator: curandGenerator_t, outputPtr: *mut f32, num: usize) -> curandStatus_t;
    }
    curandGenerateUniform(generator, outputPtr, num)
}
extern "C" {
    pub fn curandSetStream(generator: curandGenerator_t, stream: cudaStream_t) -> curandStatus_t;
}
pub type cudaStream_t = *mut ::core::ffi::c_void;
'''


class CudaStubs(unittest.TestCase):
    def test_every_bound_function_is_found_and_nothing_else(self):
        with tempfile.TemporaryDirectory() as tmp:
            mod = Path(tmp) / "mod.rs"
            mod.write_text(BINDING)
            self.assertEqual(stubs.bound_functions(str(mod)),
                             ["curandCreateGenerator", "curandGenerateUniform", "curandSetStream"])

    def test_the_curand_stub_creates_a_generator_and_refuses_to_generate(self):
        with tempfile.TemporaryDirectory() as tmp:
            fake = Path(tmp) / "cudarc"
            for module in ("driver", "cublas", "cublaslt", "curand", "nvrtc"):
                (fake / "src" / module / "sys").mkdir(parents=True)
                text = BINDING if module == "curand" else BINDING.replace("curand", f"{module}X")
                (fake / "src" / module / "sys" / "mod.rs").write_text(text)
            out = Path(tmp) / "stubs"
            stubs.main_with([str(fake), str(out)])
            for name in ("libcuda.so.1", "libcublas.so.13", "libcublasLt.so.13",
                         "libcurand.so.10", "libnvrtc.so.13"):
                self.assertTrue((out / name).is_file(), name)
            self.assertEqual(os.readlink(out / "libcurand.so"), "libcurand.so.10")
            lib = ctypes.CDLL(str(out / "libcurand.so.10"))
            gen = ctypes.c_void_p()
            self.assertEqual(lib.curandCreateGenerator(ctypes.byref(gen), 100), 0)
            self.assertTrue(gen.value)
            self.assertEqual(lib.curandSetStream(gen, None), 0)
            self.assertEqual(lib.curandGenerateUniform(gen, None, 4), 999)
            driver = ctypes.CDLL(str(out / "libcuda.so.1"))
            self.assertEqual(driver.driverXCreateGenerator(ctypes.byref(gen), 100), 999)


if __name__ == "__main__":
    unittest.main()
