"""What every report page carries inline: the stylesheet, and a script that marks the body once
its images have loaded (data-images = loaded | broken), which the browser test reads."""

SCRIPT = ("<script>(function(){function check(){var imgs=Array.prototype.slice.call(document.images);"
          "var ok=imgs.every(function(i){return i.complete&&i.naturalWidth>0});"
          "document.body.setAttribute('data-images',ok?'loaded':'broken');"
          "document.body.setAttribute('data-image-count',String(imgs.length));}"
          "if(document.readyState==='complete'){check()}else{window.addEventListener('load',check)}})();</script>")

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f6f9;color:#1f2937;font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif}
.wrap{max-width:1160px;margin:0 auto;padding:0 24px}
header{background:#1e293b;color:#f8fafc;padding:18px 0 14px;margin-bottom:22px}
header .wrap{display:flex;justify-content:space-between;align-items:flex-end;gap:24px;flex-wrap:wrap}
h1{margin:0;font-size:26px;letter-spacing:-.01em}
.sub{margin:2px 0 6px;color:#cbd5e1}.sub code{color:#e2e8f0}
.stages{margin:0;color:#94a3b8;font-size:12px}
.stage{display:inline-block;background:#334155;color:#e2e8f0;border-radius:10px;padding:1px 9px;margin:0 3px;font-size:12px}
nav a{color:#cbd5e1;text-decoration:none;margin-left:16px;font-weight:600}nav a:hover{color:#fff}
section{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(15,23,42,.08);padding:18px 22px 20px;margin:0 0 20px}
h2{margin:0 0 4px;font-size:19px}h3{font-size:15px;margin:18px 0 6px}
.lead{margin:0 0 14px;color:#4b5563;max-width:920px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;margin:0 0 20px}
section .tiles{margin:4px 0 14px}
.tile{background:#fff;border-radius:8px;border-top:4px solid #475569;padding:10px 14px;box-shadow:0 1px 3px rgba(15,23,42,.08)}
section .tile{background:#f8fafc;box-shadow:none}
.tile-value{font-size:24px;font-weight:700;letter-spacing:-.01em}
.tile-label{font-weight:600;color:#374151}.tile-note{color:#6b7280;font-size:12px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:14px}
figure{margin:0}.chart-box{background:#fff;border:1px solid #eef0f3;border-radius:8px;padding:8px 10px}
figcaption{color:#6b7280;font-size:12px;margin-top:2px}
svg.chart{display:block;max-width:100%;height:auto;font-family:inherit}
.missing{background:#fff7ed;border:1px solid #fed7aa;border-left:4px solid #e39b2d;border-radius:6px;padding:10px 14px;color:#7c2d12}
.note{color:#6b7280;font-size:13px}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px;background:#f1f5f9;
border-radius:4px;padding:1px 5px}
header code{background:transparent;padding:0}
details{margin-top:12px;border-top:1px solid #eef0f3;padding-top:8px}summary{cursor:pointer;font-weight:600;color:#374151}
details p{max-width:920px}
table{border-collapse:collapse;width:100%;font-size:13px;margin-bottom:6px}
th{text-align:right;color:#6b7280;font-weight:600;border-bottom:2px solid #e5e7eb;padding:6px 10px}
td{text-align:right;border-bottom:1px solid #f0f2f5;padding:6px 10px;font-variant-numeric:tabular-nums}
th:first-child,td.name,th.text,td.text{text-align:left}td.name{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
tbody tr:hover{background:#f8fafc}.muted{color:#9ca3af;font-weight:400;font-size:12px}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.pair{border:1px solid #e5e7eb;border-radius:10px;padding:10px;background:#fcfcfd}
.sides{display:flex;gap:8px}
.side{position:relative;flex:1;border:3px solid transparent;border-radius:8px;overflow:hidden;background:#f1f5f9;
display:flex;align-items:center;justify-content:center;min-height:120px}
.side.won{border-color:#2f9e63}
.side img{display:block;width:100%;height:auto}
.which{position:absolute;top:6px;left:6px;background:rgba(15,23,42,.7);color:#fff;font-size:11px;font-weight:700;
border-radius:4px;padding:0 6px}
.badge{position:absolute;bottom:6px;right:6px;font-size:11px;font-weight:700;border-radius:10px;padding:1px 8px;color:#fff}
.badge.win{background:#2f9e63}.badge.tie{background:#6b7280}
.noimg{color:#9ca3af;font-size:12px;padding:20px;text-align:center}
.prompt{margin:8px 2px 4px;font-weight:600;line-height:1.35}
.facts{margin:0 2px 6px;color:#4b5563;font-size:12px}
.chips{display:flex;flex-wrap:wrap;gap:4px;margin:0 2px}
.chip{background:#ede5fb;color:#5b34a8;border-radius:10px;padding:1px 9px;font-size:11.5px;font-weight:600;cursor:help}
.chip.filter{background:#fdf0db;color:#8a5a12}
.pid{margin:6px 2px 0;color:#9ca3af;font-size:11px;font-family:ui-monospace,Menlo,Consolas,monospace;
overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
footer{color:#9ca3af;font-size:12px;padding:4px 24px 30px}
.findings{margin:0 0 12px;padding-left:20px;max-width:920px}.findings li{margin:3px 0}.sides .col{flex:1;min-width:0}
"""
