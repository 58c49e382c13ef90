"""The markdown report, contact sheets and videos `python -m sorajax.evaluate` writes (kept apart
from its flags, so that tests and other tools can render a report)."""
from __future__ import annotations

import os

import numpy as np

from sorajax import configuration
from sorajax.data import video_io

ATTRIBUTES = ("color", "shape", "motion", "color_and_motion")


def two_places(value) -> str:
  return "n/a" if value is None else f"{value:.2f}"


def write_report(out: str, rows, videos, summary, info, extra_lines=()) -> None:
  os.makedirs(os.path.join(out, "videos"), exist_ok=True)
  for index, (row, video) in enumerate(zip(rows, videos)):
    stem = os.path.join(out, "videos", f"{index:03d}_seed{row['seed']}")
    video_io.write_mp4(stem + ".mp4", video, scale=4)
    video_io.write_gif(stem + ".gif", video, scale=4)
    row["files"] = [stem + ".mp4", stem + ".gif"]
  # One row per sample, in prompt order: a glance shows whether motion and color came out.
  video_io.write_png(os.path.join(out, "contact_sheet.png"),
                     video_io.upscale(video_io.contact_sheet(videos), 2))
  configuration.write_json_atomic(os.path.join(out, "report.json"),
                                  {"summary": summary, "info": info, "samples": rows})
  lines = ["# Held-out prompt report", "",
           f"- run: `{info['workdir']}` (checkpoint step {info['step']})",
           f"- {info['prompts']} held-out prompts x {info['seeds']} seeds = {len(rows)} videos, "
           f"{info['sampler_steps']} {info['sampler']} steps, guidance {info['guidance']}"
           + (f", {info['stage_frames']} latent frame(s) per stage" if info["stage_frames"]
              else ""),
           f"- sampling time: {info['seconds']:.1f} s", "",
           "| attribute | accuracy |", "|---|---|"]
  lines += [f"| {name} | {100 * summary[name]:.1f}% |" for name in ATTRIBUTES]
  pace = {name: two_places(value) for name, value in info["pace"].items()}
  lines += ["", f"Pace of the left/right/up/down movers: median travel {pace['median_travel']} "
            "of the training clips' (1: the same pace), median evenness "
            f"{pace['median_evenness']} (slowest step over mean step; 1: steady, <= 0: stops or "
            "steps back)."]
  lines += ["", "| caption | seed | color | shape | motion |", "|---|---|---|---|---|"]
  mark = lambda v: "yes" if v else ("n/a" if v is None else "no")
  lines += [f"| {r['caption']} | {r['seed']} | {mark(r['color'])} | {mark(r['shape'])} | "
            f"{mark(r['motion'])} |" for r in rows]
  lines += list(extra_lines)
  tmp = os.path.join(out, f"report.md.tmp-{os.getpid()}")
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, os.path.join(out, "report.md"))


def write_paraphrased(out: str, rows, videos, summary) -> list[str]:
  """A contact sheet of the paraphrased samples; returns the report's markdown lines."""
  video_io.write_png(os.path.join(out, "paraphrased_sheet.png"),
                     video_io.upscale(video_io.contact_sheet(videos), 2))
  lines = ["", "## Paraphrased held-out prompts", "",
           "The same prompts in words no training caption uses (shapes.PARAPHRASES), judged "
           "against what they mean; `paraphrased_sheet.png`.", "",
           "| attribute | accuracy |", "|---|---|"]
  lines += [f"| {name} | {100 * summary[name]:.1f}% |" for name in ATTRIBUTES]
  mark = lambda v: "yes" if v else ("n/a" if v is None else "no")
  lines += ["", "| caption | seed | color | shape | motion |", "|---|---|---|---|---|"]
  lines += [f"| {r['caption']} | {r['seed']} | {mark(r['color'])} | {mark(r['shape'])} | "
            f"{mark(r['motion'])} |" for r in rows]
  return lines


MODE_TITLES = {
    "animate": "image -> video (first frame of a rendered clip)",
    "extend": "extend forward (one chunk)",
    "extend_back": "extend backward (one chunk)",
    "connect": "connect two clips of one path",
    "loop": "seamless loop of a rendered clip",
    "edit": "video -> video edit to the prompt's color",
    "rollout": "minute-long rollout (forward extension, chunk by chunk)",
}


def write_modes(out: str, modes: dict, seconds: float) -> list[str]:
  """Contact sheets per mode; returns the report's markdown lines."""
  os.makedirs(os.path.join(out, "modes"), exist_ok=True)
  seen = not np.isnan(modes.get("rollout", {}).get("metrics", {}).get(
      "color_and_shape_windows_seen_in_view", np.nan))
  about_seen = ("; the rollouts' `..._seen_in_view` measures are of each in-view prompt's seen "
                "counterpart (its shape and motion in a color training shows them in)")
  lines = ["", "## Prompting modes", "",
           f"Held-out prompts, judged by the world's judge ({seconds:.0f} s for all modes)"
           f"{about_seen if seen else ''}. Sheets in `modes/`.", "",
           "| mode | measure | value |", "|---|---|---|"]
  for mode, result in modes.items():
    video_io.write_png(os.path.join(out, "modes", f"{mode}.png"),
                       video_io.upscale(video_io.contact_sheet(result["videos"]), 2))
    for name, value in result["metrics"].items():
      if name.endswith("_seen_in_view") and not seen:
        continue  # --norollout_seen
      shown = f"{100 * value:.1f}%" if name in PERCENT_METRICS else f"{value:.3g}"
      lines.append(f"| {MODE_TITLES[mode]} | {name} | {shown} |")
  return lines


PERCENT_METRICS = ("color", "shape", "motion", "motion_continues", "ends_matched",
                   "wrap_within_typical", "wrap_within_typical_cyclic",
                   "color_and_shape_windows", "worst_video", "videos_kept_whole",
                   "color_and_shape_windows_in_view", "worst_video_in_view",
                   "videos_kept_whole_in_view", "misshaped_in_view",
                   "color_and_shape_windows_seen_in_view", "videos_kept_whole_seen_in_view",
                   "first_sixth_in_view", "last_sixth_in_view", "reference_windows_in_view")
