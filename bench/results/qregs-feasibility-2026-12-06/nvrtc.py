import ctypes, sys
lib = ctypes.CDLL("/work/main/.ci/pydeps/nvidia/cu13/lib/libnvrtc.so.13")
src = open(sys.argv[1]).read().encode()
prog = ctypes.c_void_p()
assert lib.nvrtcCreateProgram(ctypes.byref(prog), src, b"k.cu", 0, None, None) == 0
opts = [b"--gpu-architecture=sm_90a", b"-Xptxas", b"-v", b"--std=c++17"]
arr = (ctypes.c_char_p * len(opts))(*opts)
rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
n = ctypes.c_size_t()
lib.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
log = ctypes.create_string_buffer(n.value)
lib.nvrtcGetProgramLog(prog, log)
print("rc", rc); print(log.value.decode())
if rc == 0:
    lib.nvrtcGetCUBINSize(prog, ctypes.byref(n))
    b = ctypes.create_string_buffer(n.value)
    lib.nvrtcGetCUBIN(prog, b)
    open(sys.argv[1] + ".cubin", "wb").write(b.raw)
