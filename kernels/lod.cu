// LOD reaction-diffusion kernels for tme_abm (loaded with cupy.RawModule).
//
// The field buffer is viewed as (F, n, W): F fields, n voxels along the axis being
// swept (the leading spatial axis), W = product of the other spatial extents.
// NumPy twins: tme_abm.diffusion.thomas_sweep_numpy and rotate_numpy.

// Scaled Thomas solve along the leading axis, one thread per line (f, w).
// Adjacent threads own adjacent w, so every load/store of a plane is coalesced.
// Diffusing fields: forward g_i = cp_i (d_i + g_{i-1}), backward h_i = g_i + cp_i h_{i+1};
// the buffer then holds r * u_new (lod_rotate multiplies by 1/r).
// Non-diffusing fields (D = 0): u <- u * invb.
template <typename T>
__device__ void lod_sweep(T* __restrict__ u, const T* __restrict__ cp,
                          const T* __restrict__ rhs_lo, const T* __restrict__ rhs_hi,
                          const T* __restrict__ invb, const int* __restrict__ diffusing,
                          int nf, int n, long long w)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)nf * w) return;
    int f = (int)(t / w);
    long long col = t - (long long)f * w;
    T* line = u + (long long)f * n * w + col;
    const T* c = cp + (long long)f * n;

    if (!diffusing[f]) {
        T s = invb[f];
        for (int i = 0; i < n; ++i) line[(long long)i * w] *= s;
        return;
    }
    T d0 = line[0] + rhs_lo[f];
    if (n == 1) d0 += rhs_hi[f];
    T g = d0 * c[0];
    line[0] = g;
    for (int i = 1; i < n; ++i) {
        T d = line[(long long)i * w];
        if (i == n - 1) d += rhs_hi[f];
        g = (d + g) * c[i];
        line[(long long)i * w] = g;
    }
    T h = g;
    for (int i = n - 2; i >= 0; --i) {
        T gi = line[(long long)i * w];
        h = gi + c[i] * h;
        line[(long long)i * w] = h;
    }
}

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

__global__ void lod_sweep_f32(float* u, const float* cp, const float* rhs_lo, const float* rhs_hi,
                              const float* invb, const int* diffusing, int nf, int n, long long w)
{
    lod_sweep<float>(u, cp, rhs_lo, rhs_hi, invb, diffusing, nf, n, w);
}

__global__ void lod_sweep_f64(double* u, const double* cp, const double* rhs_lo, const double* rhs_hi,
                              const double* invb, const int* diffusing, int nf, int n, long long w)
{
    lod_sweep<double>(u, cp, rhs_lo, rhs_hi, invb, diffusing, nf, n, w);
}

__global__ void lod_rotate_f32(const float* src, float* dst, const float* scale, int n, long long w)
{
    lod_rotate<float>(src, dst, scale, n, w);
}

__global__ void lod_rotate_f64(const double* src, double* dst, const double* scale, int n, long long w)
{
    lod_rotate<double>(src, dst, scale, n, w);
}

}  // extern "C"
