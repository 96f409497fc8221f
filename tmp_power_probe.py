# Temporary probe (deleted after use): counter staircase vs integrated instant power on a GPU.
import time, numpy as np, torch
from tokencarbon.power.sidecar import PowerSidecar, read_samples
from tokencarbon.energy import energy_from_power, energy_from_counter

def changepoints(df):
    c = df["energy_counter_j"].to_numpy()
    keep = np.r_[True, c[1:] != c[:-1]]
    keep[-1] = True
    return df[keep]

a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
for interval in (0.05, 0.02):
    out = f"/tmp/probe_{interval}.parquet"
    marks = []
    with PowerSidecar({"kind": "nvml", "device_index": 0}, out, interval_s=interval):
        time.sleep(1.0)
        for k in range(3):  # load bursts of 0.7 s separated by 0.5 s idle
            torch.cuda.synchronize(); s = time.time_ns()
            while time.time_ns() - s < 0.7e9:
                for _ in range(5): a @ a
                torch.cuda.synchronize()
            marks.append((s, time.time_ns()))
            time.sleep(0.5)
    df = read_samples(out)
    print("interval", interval, "n", len(df), "median dt ms", np.median(np.diff(df.t_wall_ns))/1e6)
    t0 = marks[0][0]; t_end = marks[-1][1]
    windows = marks + [(t0, t_end), (t0 - int(0.5e9), t_end + int(0.4e9))]
    for s, e in windows:
        p = energy_from_power(df, s, e); c = energy_from_counter(df, s, e); cc = energy_from_counter(changepoints(df), s, e)
        print(f"  win {(e-s)/1e9:.2f}s P_int {p:8.1f} J  counter {c:8.1f} ({(p-c)/c:+.3f})  changepoint {cc:8.1f} ({(p-cc)/cc:+.3f})")
