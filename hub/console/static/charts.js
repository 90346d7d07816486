// The console's charts (Apache ECharts), drawn from the JSON blocks a page carries: a file of
// its own, so that the pages' Content-Security-Policy allows no inline script.
(function () {
  if (!window.echarts) { return; }
  function data(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  function draw(id, type, names) {
    var d = data(id + '-data');
    var el = document.getElementById(id);
    if (!d || !el) { return; }
    var chart = echarts.init(el);
    chart.setOption({
      tooltip: {trigger: 'axis'}, legend: {top: 0},
      xAxis: {type: 'category', data: d.days}, yAxis: {type: 'value', minInterval: 1},
      series: d.series.map(function (s) {
        return {name: names ? names[s.key] : s.name, type: type,
                stack: type === 'bar' ? 'all' : undefined, data: s.data};
      })
    });
    el.dataset.rendered = 'yes';
  }
  // the overview: intake by day (stacked bars), quarantine entries by day (lines)
  draw('intake', 'bar');
  draw('kept', 'line');
  // the quality page: its trend, the series named in the page's language
  draw('trend', 'line', data('trend-names'));
})();
