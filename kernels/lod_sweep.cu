// Thomas line solves of the LOD reaction-diffusion step (tme_abm.engine.diffusion.lod),
// loaded with cupy.RawModule through Backend.raw_module("lod_sweep").
//
// The field buffer is viewed as (F, n, W): F fields, n voxels along the axis being
// swept (the leading spatial axis), W = product of the other spatial extents.
// NumPy twins: tme_abm.engine.diffusion.thomas.thomas_sweep_numpy and
// thomas_sweep_sink_numpy.

// Scaled Thomas solve along the leading axis, one thread per line (f, w).
// Adjacent threads own adjacent w, so every load/store of a plane is coalesced.
// Diffusing fields: forward g_i = cp_i (d_i + g_{i-1}), backward h_i = g_i + cp_i h_{i+1};
// the buffer then holds r * u_new (lod_rotate multiplies by 1/r).
// kind[f]: 1 diffusing, 0 non-diffusing (D = 0: u <- u * invb), 2 skip (the field has
// cell uptake and is solved by lod_sweep_sink).
template <typename T>
__device__ void lod_sweep(T* __restrict__ u, const T* __restrict__ cp,
                          const T* __restrict__ rhs_lo, const T* __restrict__ rhs_hi,
                          const T* __restrict__ invb, const int* __restrict__ kind,
                          int nf, int n, long long w)
{
    long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (long long)nf * w) return;
    int f = (int)(t / w);
    long long col = t - (long long)f * w;
    T* line = u + (long long)f * n * w + col;
    const T* c = cp + (long long)f * n;

    if (kind[f] == 2) return;
    if (kind[f] == 0) {
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

// One field with per-voxel cell uptake e (dt*U/ndim) on the diagonal, one thread per
// line: cp_i = r / (b_i + e_i - r cp_{i-1}) is computed on the fly and stored in e for
// the backward pass. u and e are (n, W); the buffer then holds r * u_new.
template <typename T>
__device__ void lod_sweep_sink(T* __restrict__ u, T* __restrict__ e, const T* __restrict__ b,
                               T r, T rhs_lo, T rhs_hi, int n, long long w)
{
    long long col = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= w) return;
    T* line = u + col;
    T* ce = e + col;
    T cp = r / (b[0] + ce[0]);
    ce[0] = cp;
    T d0 = line[0] + rhs_lo;
    if (n == 1) d0 += rhs_hi;
    T g = d0 * cp;
    line[0] = g;
    for (int i = 1; i < n; ++i) {
        long long k = (long long)i * w;
        cp = r / (b[i] + ce[k] - r * cp);
        ce[k] = cp;
        T d = line[k];
        if (i == n - 1) d += rhs_hi;
        g = (d + g) * cp;
        line[k] = g;
    }
    T h = g;
    for (int i = n - 2; i >= 0; --i) {
        long long k = (long long)i * w;
        h = line[k] + ce[k] * h;
        line[k] = h;
    }
}

extern "C" {

__global__ void lod_sweep_f32(float* u, const float* cp, const float* rhs_lo, const float* rhs_hi,
                              const float* invb, const int* kind, int nf, int n, long long w)
{
    lod_sweep<float>(u, cp, rhs_lo, rhs_hi, invb, kind, nf, n, w);
}

__global__ void lod_sweep_f64(double* u, const double* cp, const double* rhs_lo, const double* rhs_hi,
                              const double* invb, const int* kind, int nf, int n, long long w)
{
    lod_sweep<double>(u, cp, rhs_lo, rhs_hi, invb, kind, nf, n, w);
}

__global__ void lod_sweep_sink_f32(float* u, float* e, const float* b, float r, float rhs_lo,
                                   float rhs_hi, int n, long long w)
{
    lod_sweep_sink<float>(u, e, b, r, rhs_lo, rhs_hi, n, w);
}

__global__ void lod_sweep_sink_f64(double* u, double* e, const double* b, double r, double rhs_lo,
                                   double rhs_hi, int n, long long w)
{
    lod_sweep_sink<double>(u, e, b, r, rhs_lo, rhs_hi, n, w);
}

}  // extern "C"
