// The transposing copy between the axis sweeps of the LOD step
// (tme_abm.engine.diffusion.lod), loaded with cupy.RawModule through
// Backend.raw_module("lod_rotate"). NumPy twin: tme_abm.engine.diffusion.thomas.rotate_numpy.

// dst[f, w, i] = src[f, i, w] * scale[f]: per-field tiled transpose (32 x 32 tiles
// through shared memory, padded against bank conflicts), coalesced reads and writes.
// grid = (ceil(W/32), ceil(n/32), F), block = (32, 8).
template <typename T>
__device__ void lod_rotate(const T* __restrict__ src, T* __restrict__ dst,
                           const T* __restrict__ scale, int n, long long w)
{
    __shared__ T tile[32][33];
    int f = blockIdx.z;
    long long w0 = (long long)blockIdx.x * 32;
    int i0 = blockIdx.y * 32;
    const T* s = src + (long long)f * n * w;
    T* d = dst + (long long)f * n * w;
    T k = scale[f];
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        int i = i0 + j;
        long long ww = w0 + threadIdx.x;
        if (i < n && ww < w) tile[j][threadIdx.x] = s[(long long)i * w + ww];
    }
    __syncthreads();
    for (int j = threadIdx.y; j < 32; j += blockDim.y) {
        long long ww = w0 + j;
        int i = i0 + threadIdx.x;
        if (i < n && ww < w) d[ww * n + i] = tile[threadIdx.x][j] * k;
    }
}

extern "C" {

__global__ void lod_rotate_f32(const float* src, float* dst, const float* scale, int n, long long w)
{
    lod_rotate<float>(src, dst, scale, n, w);
}

__global__ void lod_rotate_f64(const double* src, double* dst, const double* scale, int n, long long w)
{
    lod_rotate<double>(src, dst, scale, n, w);
}

}  // extern "C"
