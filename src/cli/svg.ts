/**
 * Bar charts of a bench run as a standalone SVG, written by hand (no dependency): p50 round trip,
 * messages/s and MB/s, one group of bars per payload size, one bar per transport/codec, log scale.
 */
import { fmtBytes, fmtNum, rowName, type Machine, type Result } from './format';

const COLORS: Record<string, string[]> = {
  shm: ['#1f6feb', '#5a9cf8', '#9cc3fb'],
  process: ['#2da44e', '#6fcf8b', '#a9e6b9'],
  nats: ['#8250df', '#ab87ea', '#d0bdf5'],
  ipc: ['#cf222e'],
  uds: ['#bf8700'],
  natsraw: ['#6e7781'],
};

const esc = (s: string): string => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

interface Panel {
  title: string;
  value: (r: Result) => number;
}

export function renderSvg(results: readonly Result[], m: Machine, o: { duration: number }): string {
  const series: string[] = [];
  for (const r of results) {
    const key = `${rowName(r)}/${r.codec}`;
    if (!series.includes(key)) series.push(key);
  }
  const payloads = [...new Set(results.map((r) => r.payload))].sort((a, b) => a - b);
  const color = (key: string): string => {
    const [t] = key.split('/');
    const sameTransport = series.filter((s) => s.startsWith(`${t}/`));
    const palette = COLORS[t] ?? ['#57606a'];
    return palette[Math.min(sameTransport.indexOf(key), palette.length - 1)];
  };
  const panels: Panel[] = [
    { title: 'p50 round trip, µs (lower is better)', value: (r) => r.rtt_us.p50 },
    { title: 'throughput, messages/s (higher is better)', value: (r) => r.msgs_per_s },
    { title: 'throughput, MB/s (higher is better)', value: (r) => r.mb_per_s },
  ];
  const bar = 14;
  const groupGap = 28;
  const left = 70;
  const plotH = 220;
  const panelH = plotH + 80;
  const groupW = Math.max(1, series.length) * bar + groupGap;
  const width = Math.max(640, left + payloads.length * groupW + 40);
  const legendH = 20 + Math.ceil(series.length / 4) * 18;
  const height = 60 + panels.length * panelH + legendH;
  const parts: string[] = [];
  parts.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`);
  parts.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  parts.push(`<text x="${left}" y="24" font-size="15" font-weight="bold">shmbus bench</text>`);
  parts.push(`<text x="${left}" y="42" fill="#57606a">${esc(`node ${m.node}, ${m.platform}, ${m.cpus} CPUs; ${o.duration} s per phase; log scales`)}</text>`);

  panels.forEach((panel, p) => {
    const top = 60 + p * panelH + 24;
    const values = results.map(panel.value).filter((v) => v > 0);
    const lo = values.length ? Math.floor(Math.log10(Math.min(...values))) : 0;
    const hi = values.length ? Math.ceil(Math.log10(Math.max(...values)) + 0.0001) : 1;
    const span = Math.max(1, hi - lo);
    // The top 18% is left for the value printed above the tallest bar.
    const y = (v: number): number => top + plotH - ((Math.log10(v) - lo) / span) * plotH * 0.82;
    parts.push(`<text x="${left}" y="${top - 10}" font-size="13" font-weight="bold">${esc(panel.title)}</text>`);
    for (let e = lo; e <= lo + span; e++) {
      const gy = y(10 ** e);
      parts.push(`<line x1="${left}" x2="${width - 20}" y1="${gy.toFixed(1)}" y2="${gy.toFixed(1)}" stroke="#d0d7de" stroke-width="1"/>`);
      parts.push(`<text x="${left - 6}" y="${(gy + 4).toFixed(1)}" text-anchor="end" fill="#57606a">${esc(fmtNum(10 ** e))}</text>`);
    }
    payloads.forEach((payload, g) => {
      const gx = left + 10 + g * groupW;
      series.forEach((key, s) => {
        const r = results.find((x) => `${rowName(x)}/${x.codec}` === key && x.payload === payload);
        if (!r) return;
        const v = panel.value(r);
        if (!(v > 0)) return;
        const by = y(v);
        const x = gx + s * bar;
        parts.push(`<rect x="${x}" y="${by.toFixed(1)}" width="${bar - 2}" height="${(top + plotH - by).toFixed(1)}" fill="${color(key)}"><title>${esc(`${key} ${fmtBytes(payload)}: ${fmtNum(v)}`)}</title></rect>`);
        parts.push(`<text transform="translate(${x + (bar - 2) / 2 + 3},${(by - 3).toFixed(1)}) rotate(-90)" font-size="9" fill="#24292f">${esc(fmtNum(v))}</text>`);
      });
      parts.push(`<text x="${gx + (series.length * bar) / 2}" y="${top + plotH + 16}" text-anchor="middle">${esc(fmtBytes(payload))}</text>`);
    });
  });

  const ly = 60 + panels.length * panelH + 10;
  series.forEach((key, i) => {
    const lx = left + (i % 4) * 150;
    const yy = ly + Math.floor(i / 4) * 18;
    parts.push(`<rect x="${lx}" y="${yy}" width="12" height="12" fill="${color(key)}"/>`);
    parts.push(`<text x="${lx + 18}" y="${yy + 10}">${esc(key)}</text>`);
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
